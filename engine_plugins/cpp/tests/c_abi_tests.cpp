// c_abi_tests.cpp: the C ABI without a server: argument checks, and a session whose server cannot be reached
// ends (or keeps reconnecting) without ever blocking the caller.
#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <limits>
#include <string>
#include <thread>

#include "avatar_backend/avatar_client.h"

namespace {

using Clock = std::chrono::steady_clock;

avb_client* unreachable_client() {
  avb_client_config config;
  std::memset(&config, 0, sizeof config);
  config.struct_size = sizeof config;
  config.target = "127.0.0.1:1";  // nothing listens on port 1
  config.connect_timeout_ms = 300;
  avb_client* client = nullptr;
  EXPECT_EQ(avb_client_create(&config, &client), AVB_OK);
  return client;
}

avb_session_config session_config(const char* npc, int reconnect) {
  avb_session_config config;
  std::memset(&config, 0, sizeof config);
  config.struct_size = sizeof config;
  config.npc_id = npc;
  config.character_id = "default";
  config.reconnect = reconnect;
  return config;
}

// Polls events until one of `type` (and, if given, `code`) arrives or the timeout passes.
bool wait_event(avb_session* session, int32_t type, int32_t code, avb_event* out, double timeout_s) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (Clock::now() < deadline) {
    if (avb_session_poll_event(session, out) == AVB_OK) {
      if (out->type == type && (code < 0 || out->code == code)) return true;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  return false;
}

TEST(CAbi, VersionAndArgumentChecks) {
  EXPECT_EQ(avb_abi_version(), static_cast<uint32_t>(AVB_ABI_VERSION));
  avb_client* client = nullptr;
  EXPECT_EQ(avb_client_create(nullptr, &client), AVB_BAD_ARGUMENT);
  avb_client_config small;
  std::memset(&small, 0, sizeof small);
  small.struct_size = 4;
  small.target = "127.0.0.1:1";
  EXPECT_EQ(avb_client_create(&small, &client), AVB_BAD_ARGUMENT);
  EXPECT_EQ(client, nullptr);

  client = unreachable_client();
  avb_session* session = nullptr;
  auto no_npc = session_config("", 0);
  EXPECT_EQ(avb_session_open(client, &no_npc, &session), AVB_BAD_ARGUMENT);
  char message[256];
  EXPECT_GT(avb_client_last_error(client, message, sizeof message), 0u);
  auto bad_rate = session_config("npc", 0);
  bad_rate.sample_rate = 44100;
  EXPECT_EQ(avb_session_open(client, &bad_rate, &session), AVB_BAD_ARGUMENT);
  for (float guidance : {0.5f, -1.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    auto bad_guidance = session_config("npc", 0);
    bad_guidance.prompt_guidance = guidance;
    EXPECT_EQ(avb_session_open(client, &bad_guidance, &session), AVB_BAD_ARGUMENT) << guidance;
  }
  EXPECT_EQ(session, nullptr);
  // A caller built against the header before prompt_guidance: its struct ends before the field, which is not
  // read (here it holds a value that would be refused).
  auto older = session_config("npc-older", 0);
  older.struct_size = offsetof(avb_session_config, prompt_guidance);
  older.prompt_guidance = -1.0f;
  ASSERT_EQ(avb_session_open(client, &older, &session), AVB_OK);
  avb_session_destroy(session);
  session = nullptr;
  auto too_small = session_config("npc", 0);
  too_small.struct_size = offsetof(avb_session_config, prompt_guidance) - 4;
  EXPECT_EQ(avb_session_open(client, &too_small, &session), AVB_BAD_ARGUMENT);

  EXPECT_EQ(avb_session_push_pcm(nullptr, nullptr, 0), AVB_BAD_ARGUMENT);
  EXPECT_EQ(avb_session_poll_event(nullptr, nullptr), AVB_BAD_ARGUMENT);
  auto config = session_config("npc", 0);
  ASSERT_EQ(avb_session_open(client, &config, &session), AVB_OK);
  uint8_t pixels[16];
  avb_frame_info info;
  EXPECT_EQ(avb_session_poll_frame(session, 7, pixels, sizeof pixels, &info), AVB_BAD_ARGUMENT);
  EXPECT_EQ(avb_session_poll_frame(session, AVB_PIXELS_RGBA, nullptr, 0, &info), AVB_BAD_ARGUMENT);
  EXPECT_EQ(avb_session_poll_due_frame(session, 0, AVB_PIXELS_RGB, pixels, sizeof pixels, &info), AVB_NOT_READY);
  avb_stats stats;
  std::memset(&stats, 0, sizeof stats);
  EXPECT_EQ(avb_session_get_stats(session, &stats), AVB_BAD_ARGUMENT);  // struct_size not set
  stats.struct_size = sizeof stats;
  EXPECT_EQ(avb_session_get_stats(session, &stats), AVB_OK);
  avb_client_destroy(client);  // frees the session too
}

TEST(CAbi, AnUnreachableServerEndsTheSessionWithUnavailableAndNeverBlocks) {
  avb_client* client = unreachable_client();
  auto config = session_config("npc", 0);
  avb_session* session = nullptr;
  ASSERT_EQ(avb_session_open(client, &config, &session), AVB_OK);
  avb_event event;
  ASSERT_TRUE(wait_event(session, AVB_EVENT_STATE, AVB_STATE_OPENING, &event, 1.0));
  // Voice pushed meanwhile is queued at once.
  int16_t voice[960] = {0};
  const auto before = Clock::now();
  EXPECT_EQ(avb_session_push_pcm(session, voice, 960), AVB_OK);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - before).count(), 0.2);
  ASSERT_TRUE(wait_event(session, AVB_EVENT_ENDED, -1, &event, 10.0));
  EXPECT_EQ(event.code, 14);  // UNAVAILABLE
  char message[256];
  avb_session_last_error(session, message, sizeof message);
  EXPECT_NE(std::string(message).find("UNAVAILABLE"), std::string::npos) << message;
  ASSERT_TRUE(wait_event(session, AVB_EVENT_STATE, AVB_STATE_CLOSED, &event, 1.0));
  EXPECT_EQ(avb_session_push_pcm(session, voice, 960), AVB_CLOSED);
  avb_session_destroy(session);
  avb_session_destroy(session);  // a second destroy of the same handle does nothing
  avb_client_destroy(client);
}

TEST(CAbi, TimedControlAndTheVoiceCount) {
  EXPECT_EQ(avb_session_voice_samples_sent(nullptr), 0u);
  EXPECT_EQ(avb_session_set_emotion_at(nullptr, "happy", 1.0f, 0), AVB_BAD_ARGUMENT);
  EXPECT_EQ(avb_session_play_action_at(nullptr, "wave", 0), AVB_BAD_ARGUMENT);
  // A session that keeps reconnecting to nothing stays open: its pushes and events are queued and counted.
  avb_client* client = unreachable_client();
  auto config = session_config("npc", 1);
  avb_session* session = nullptr;
  ASSERT_EQ(avb_session_open(client, &config, &session), AVB_OK);
  EXPECT_EQ(avb_session_voice_samples_sent(session), 0u);
  int16_t voice[1000] = {0};
  ASSERT_EQ(avb_session_push_pcm(session, voice, 1000), AVB_OK);
  EXPECT_EQ(avb_session_voice_samples_sent(session), 960u);  // one 20 ms packet at 48 kHz; 40 samples wait
  ASSERT_EQ(avb_session_end_utterance(session), AVB_OK);
  EXPECT_EQ(avb_session_voice_samples_sent(session), 1920u);  // the rest and the look-ahead, padded to a packet
  const uint64_t beyond_32_bits = (uint64_t{1} << 33) + 7;
  EXPECT_EQ(avb_session_set_emotion_at(session, "happy", 0.5f, beyond_32_bits), AVB_OK);
  EXPECT_EQ(avb_session_play_action_at(session, "wave", 1920), AVB_OK);
  EXPECT_EQ(avb_session_play_action_at(session, nullptr, 1920), AVB_BAD_ARGUMENT);
  avb_session_destroy(session);
  avb_client_destroy(client);
}

TEST(CAbi, WithReconnectItKeepsTryingAndDestroyStopsItPromptly) {
  avb_client* client = unreachable_client();
  auto config = session_config("npc", 1);
  avb_session* session = nullptr;
  ASSERT_EQ(avb_session_open(client, &config, &session), AVB_OK);
  avb_event event;
  ASSERT_TRUE(wait_event(session, AVB_EVENT_STATE, AVB_STATE_RECONNECTING, &event, 10.0));
  avb_stats stats;
  std::memset(&stats, 0, sizeof stats);
  stats.struct_size = sizeof stats;
  ASSERT_EQ(avb_session_get_stats(session, &stats), AVB_OK);
  EXPECT_GE(stats.reconnects, 1u);
  const auto before = Clock::now();
  avb_session_destroy(session);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - before).count(), 1.5);
  avb_client_destroy(client);
}

TEST(CAbi, WithAReconnectTimeoutItGivesUpAndEndsTheSession) {
  avb_client* client = unreachable_client();
  auto config = session_config("npc", 1);
  config.reconnect_timeout_ms = 700;
  avb_session* session = nullptr;
  const auto opened = Clock::now();
  ASSERT_EQ(avb_session_open(client, &config, &session), AVB_OK);
  avb_event event;
  ASSERT_TRUE(wait_event(session, AVB_EVENT_STATE, AVB_STATE_RECONNECTING, &event, 10.0));
  ASSERT_TRUE(wait_event(session, AVB_EVENT_ENDED, -1, &event, 10.0));
  const double ended_after_s = std::chrono::duration<double>(Clock::now() - opened).count();
  EXPECT_GE(ended_after_s, 0.7);
  EXPECT_LT(ended_after_s, 5.0);
  EXPECT_EQ(event.code, 14);  // UNAVAILABLE, the last attempt's status
  EXPECT_NE(std::string(event.text).find("reconnect_timeout_ms"), std::string::npos) << event.text;
  avb_stats stats;
  std::memset(&stats, 0, sizeof stats);
  stats.struct_size = sizeof stats;
  ASSERT_EQ(avb_session_get_stats(session, &stats), AVB_OK);
  EXPECT_GE(stats.reconnects, 1u);
  EXPECT_EQ(stats.state, AVB_STATE_CLOSED);
  // A caller built against the header before reconnect_timeout_ms keeps reconnecting for ever.
  auto older = session_config("npc-older", 1);
  older.struct_size = offsetof(avb_session_config, reconnect_timeout_ms);
  older.reconnect_timeout_ms = 1;
  avb_session* older_session = nullptr;
  ASSERT_EQ(avb_session_open(client, &older, &older_session), AVB_OK);
  ASSERT_TRUE(wait_event(older_session, AVB_EVENT_STATE, AVB_STATE_RECONNECTING, &event, 10.0));
  EXPECT_FALSE(wait_event(older_session, AVB_EVENT_ENDED, -1, &event, 1.0));
  avb_session_destroy(older_session);
  avb_session_destroy(session);
  avb_client_destroy(client);
}

}  // namespace
