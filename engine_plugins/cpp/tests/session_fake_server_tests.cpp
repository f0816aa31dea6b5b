// session_fake_server_tests.cpp: the session's stream logic against a scripted in-process AvatarService (no
// generator): the resume token and restart_sequence of a reopened stream, the clock that continues across it,
// an interrupt's position converted to the server's clock and the frames its ack replaces, the end's token;
// timed control events on the wire, with their voice positions on the stream's count.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <turbojpeg.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "avatar/v1/avatar_service.grpc.pb.h"
#include "client_core.h"

namespace avb {
namespace {

namespace v1 = avatar::v1;
using Clock = std::chrono::steady_clock;

std::string tiny_jpeg() {
  std::vector<unsigned char> rgb(8 * 8 * 3, 128);
  tjhandle handle = tjInitCompress();
  unsigned char* jpeg = nullptr;
  unsigned long size = 0;
  tjCompress2(handle, rgb.data(), 8, 0, 8, TJPF_RGB, &jpeg, &size, TJSAMP_420, 90, 0);
  std::string bytes(reinterpret_cast<char*>(jpeg), size);
  tjFree(jpeg);
  tjDestroy(handle);
  return bytes;
}

// The last message of a stream the client half-closed: SessionEnded with the NPC's resume token.
grpc::Status end_normally(grpc::ServerReaderWriter<v1::ServerMessage, v1::ClientMessage>* stream,
                          const std::string& resume_token) {
  v1::ServerMessage ended;
  ended.mutable_ended()->set_resume_token(resume_token);
  stream->Write(ended);
  return grpc::Status::OK;
}

// Stream 1: accepted, 1440 samples of echo and frames 0-4, then, once a voice packet arrives, UNAVAILABLE with a
// resume-token trailer (a draining server). Stream 2: the NPC resumed at frame 10, the same echo and frames on
// a clock that starts again at 0; an interrupt is acknowledged from pts 2400 (frame 11) on; the half-close ends
// it with SessionEnded.
class ScriptedService final : public v1::AvatarService::Service {
 public:
  grpc::Status Converse(grpc::ServerContext* context,
                        grpc::ServerReaderWriter<v1::ServerMessage, v1::ClientMessage>* stream) override {
    v1::ClientMessage in;
    if (!stream->Read(&in) || !in.has_config()) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no config");
    int number;
    {
      std::lock_guard<std::mutex> lock(mutex);
      configs.push_back(in.config());
      number = static_cast<int>(configs.size());
    }
    const uint64_t first_index = number == 1 ? 0 : 10;
    v1::ServerMessage out;
    out.mutable_accepted()->set_resume_token(number == 1 ? "token-accepted-1" : "token-accepted-2");
    out.mutable_accepted()->set_start_frame_index(first_index);
    stream->Write(out);
    out.Clear();
    out.mutable_audio_echo()->set_start(0);
    out.mutable_audio_echo()->set_sample_rate(16000);
    // Stream 1: [0, 1440); stream 2: [0, 4800) on its clock, past the interrupt's replace point.
    out.mutable_audio_echo()->set_pcm16(std::string((number == 1 ? 480 : 1600) * 2, '\0'));
    stream->Write(out);
    for (uint64_t k = 0; k < 5; ++k) {
      out.Clear();
      v1::VideoFrame* frame = out.mutable_frame();
      frame->set_index(first_index + k);
      frame->set_pts(k * 2400);
      frame->set_audio_start(k * 2400);
      frame->set_audio_end((k + 1) * 2400);
      frame->set_codec(v1::VIDEO_CODEC_JPEG);
      frame->set_width(8);
      frame->set_height(8);
      frame->set_data(jpeg);
      stream->Write(out);
    }
    while (stream->Read(&in)) {
      std::lock_guard<std::mutex> lock(mutex);
      if (in.has_audio()) {
        audio.push_back({number, in.audio()});
        if (number == 1) {
          context->AddTrailingMetadata("resume-token", "token-saved-1");
          return grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is draining");
        }
      }
      if (in.has_emotion() || in.has_action()) controls.push_back({number, in});
      if (in.has_interrupt()) {
        interrupt_played_until = in.interrupt().played_until();
        out.Clear();
        out.mutable_interrupt_ack()->set_next_frame_index(first_index + 5);
        out.mutable_interrupt_ack()->set_replace_from_pts(2400);
        out.mutable_interrupt_ack()->set_dropped_samples(7);
        out.mutable_interrupt_ack()->set_unheard_samples(9600);
        stream->Write(out);
      }
    }
    return end_normally(stream, "token-ended-2");
  }

  std::mutex mutex;
  std::vector<v1::SessionConfig> configs;
  std::vector<std::pair<int, v1::AudioPacket>> audio;  // (stream number, packet)
  std::vector<std::pair<int, v1::ClientMessage>> controls;  // emotion and action events
  uint64_t interrupt_played_until = 0;
  const std::string jpeg = tiny_jpeg();
};

// Accepts the session, records every message after the config, and ends with SessionEnded on the half-close.
class RecordingService final : public v1::AvatarService::Service {
 public:
  grpc::Status Converse(grpc::ServerContext*,
                        grpc::ServerReaderWriter<v1::ServerMessage, v1::ClientMessage>* stream) override {
    v1::ClientMessage in;
    if (!stream->Read(&in) || !in.has_config()) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no config");
    {
      std::lock_guard<std::mutex> lock(mutex);
      config = in.config();
    }
    v1::ServerMessage out;
    out.mutable_accepted()->set_resume_token("token");
    stream->Write(out);
    while (stream->Read(&in)) {
      std::lock_guard<std::mutex> lock(mutex);
      received.push_back(in);
    }
    return end_normally(stream, "token-ended");
  }

  std::mutex mutex;
  v1::SessionConfig config;
  std::vector<v1::ClientMessage> received;
};

// Each stream is answered by the script's entry for its number (1, 2, ...; the last entry for all later ones),
// after its config was recorded.
class StreamScriptService final : public v1::AvatarService::Service {
 public:
  using Stream = grpc::ServerReaderWriter<v1::ServerMessage, v1::ClientMessage>;
  using Script = std::function<grpc::Status(const v1::SessionConfig&, Stream*)>;
  explicit StreamScriptService(std::vector<Script> script) : script_(std::move(script)) {}

  grpc::Status Converse(grpc::ServerContext*, Stream* stream) override {
    v1::ClientMessage in;
    if (!stream->Read(&in) || !in.has_config()) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "no config");
    size_t number;
    {
      std::lock_guard<std::mutex> lock(mutex);
      configs.push_back(in.config());
      number = configs.size();
    }
    return script_[std::min(number, script_.size()) - 1](in.config(), stream);
  }

  size_t streams() {
    std::lock_guard<std::mutex> lock(mutex);
    return configs.size();
  }

  std::mutex mutex;
  std::vector<v1::SessionConfig> configs;

 private:
  std::vector<Script> script_;
};

// Accepted with `token` from frame `first_index` on; ends as the server does after the client's half-close.
StreamScriptService::Script accept_then_end(std::string token, uint64_t first_index) {
  return [=](const v1::SessionConfig&, StreamScriptService::Stream* stream) {
    v1::ServerMessage out;
    out.mutable_accepted()->set_resume_token(token);
    out.mutable_accepted()->set_start_frame_index(first_index);
    stream->Write(out);
    v1::ClientMessage in;
    while (stream->Read(&in)) {
    }
    return end_normally(stream, token + "-ended");
  };
}

// Accepted with `token`, then ended with UNAVAILABLE and no trailer once a voice packet arrives: a cut
// connection or a crashed worker, with no word on what the server saved.
StreamScriptService::Script accept_then_drop_on_voice(std::string token, std::string message) {
  return [=](const v1::SessionConfig&, StreamScriptService::Stream* stream) {
    v1::ServerMessage out;
    out.mutable_accepted()->set_resume_token(token);
    stream->Write(out);
    v1::ClientMessage in;
    while (stream->Read(&in) && !in.has_audio()) {
    }
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, message);
  };
}

StreamScriptService::Script refuse(grpc::StatusCode code, std::string message) {
  return [=](const v1::SessionConfig&, StreamScriptService::Stream*) { return grpc::Status(code, message); };
}

bool next_event(Session& session, avb_event* event, double timeout_s = 10) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (Clock::now() < deadline) {
    if (session.poll_event(event) == AVB_OK) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

bool wait_for(Session& session, int32_t type, int32_t code, avb_event* event) {
  while (next_event(session, event)) {
    if (event->type == type && (code < 0 || event->code == code)) return true;
  }
  return false;
}

// A server for one test on a free local port (*port stays 0 when it could not start).
std::unique_ptr<grpc::Server> start_local_server(grpc::Service& service, int* port) {
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), port);
  builder.RegisterService(&service);
  return builder.BuildAndStart();
}

ClientOptions client_for_port(int port) {
  ClientOptions options;
  options.target = "127.0.0.1:" + std::to_string(port);
  return options;
}

std::vector<avb_frame_info> drain_frames(Session& session) {
  std::vector<avb_frame_info> frames;
  std::vector<uint8_t> pixels(8 * 8 * 4);
  avb_frame_info info;
  while (session.poll_frame(PixelFormat::kRgba, pixels.data(), pixels.size(), &info) == AVB_OK) {
    frames.push_back(info);
  }
  return frames;
}

// A server answering by `script`, and a reconnecting session of NPC "npc" against it.
struct ScriptedRun {
  explicit ScriptedRun(std::vector<StreamScriptService::Script> script, bool reset_memory = false)
      : service(std::move(script)), server(start_local_server(service, &port)), client(client_for_port(port)) {
    SessionOptions options;
    options.npc_id = "npc";
    options.reset_memory = reset_memory;
    options.reconnect = true;
    session = client.open_session_owned(options);
  }
  ~ScriptedRun() {
    session.reset();
    if (server) server->Shutdown();
  }

  // Whether the server started and the session went live (its state event in ``event``).
  bool until_live(avb_event* event) {
    return port > 0 && wait_for(*session, AVB_EVENT_STATE, AVB_STATE_LIVE, event);
  }

  // One packet of voice: what the scripted streams that drop on voice wait for.
  bool push_voice() {
    std::vector<int16_t> voice(960, 100);
    return session->push_pcm(voice.data(), voice.size()) == AVB_OK;
  }

  StreamScriptService service;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
  Client client;
  std::unique_ptr<Session> session;
};

TEST(SessionAgainstAScriptedServer, ReconnectsResumesContinuesTheClockAndReplacesOnInterrupt) {
  ScriptedService service;
  int port = 0;
  std::unique_ptr<grpc::Server> server = start_local_server(service, &port);
  ASSERT_GT(port, 0);

  Client client(client_for_port(port));
  SessionOptions options;
  options.npc_id = "npc";
  options.reset_memory = true;
  options.reconnect = true;
  options.prompt_guidance = 3.5f;
  std::unique_ptr<Session> session = client.open_session_owned(options);

  avb_event event;
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_STATE, AVB_STATE_LIVE, &event));
  EXPECT_STREQ(event.detail, "token-accepted-1");
  // Stream 1's frames arrive (5 of them, pts 0-9600).
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  avb_stats stats{};
  while (Clock::now() < deadline) {
    session->stats(&stats);
    if (stats.frames_received == 5) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(stats.frames_received, 5u);
  // A buffer too small for the frame: nothing is taken, and the frame's size says what to allocate.
  std::vector<uint8_t> small(4);
  avb_frame_info sized{};
  ASSERT_EQ(session->poll_frame(PixelFormat::kRgba, small.data(), small.size(), &sized), AVB_BUFFER_TOO_SMALL);
  EXPECT_EQ(sized.width, 8u);
  EXPECT_EQ(sized.height, 8u);
  EXPECT_EQ(sized.index, 0u);
  ASSERT_EQ(session->poll_due_frame(0, PixelFormat::kRgb, small.data(), small.size(), &sized), AVB_BUFFER_TOO_SMALL);
  EXPECT_EQ(sized.width * sized.height * 3, 192u);
  auto first = drain_frames(*session);
  ASSERT_EQ(first.size(), 5u);
  EXPECT_EQ(first.back().pts, 9600u);

  // A voice packet; the server then drains: the session reopens by itself with the saved token.
  std::vector<int16_t> voice(960, 100);
  ASSERT_EQ(session->push_pcm(voice.data(), voice.size()), AVB_OK);
  ASSERT_TRUE(next_event(*session, &event));
  EXPECT_EQ(event.type, AVB_EVENT_STATE);
  EXPECT_EQ(event.code, AVB_STATE_RECONNECTING);
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_STATE, AVB_STATE_LIVE, &event));
  EXPECT_EQ(event.values[0], 10u);
  {
    std::lock_guard<std::mutex> lock(service.mutex);
    ASSERT_EQ(service.configs.size(), 2u);
    EXPECT_TRUE(service.configs[0].reset_memory());
    EXPECT_EQ(service.configs[0].resume_token(), "");
    EXPECT_FALSE(service.configs[1].reset_memory()) << "a reconnect must never reset the NPC";
    EXPECT_EQ(service.configs[1].resume_token(), "token-saved-1");
    EXPECT_EQ(service.configs[1].audio().opus_pre_skip(), 312u);
    for (const auto& config : service.configs) {  // the session's prompt guidance, on every stream
      ASSERT_TRUE(config.has_prompt_guidance());
      EXPECT_FLOAT_EQ(config.prompt_guidance(), 3.5f);
    }
  }

  // Stream 2's frames: the server's clock started again at 0; the session's continues after stream 1 (12000).
  while (Clock::now() < deadline) {
    session->stats(&stats);
    if (stats.frames_received == 10) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(stats.frames_received, 10u);
  EXPECT_EQ(stats.reconnects, 1u);

  // The voice continues the count and declares the new stream's restart.
  ASSERT_EQ(session->push_pcm(voice.data(), voice.size()), AVB_OK);
  // The voice count runs on across the reconnect (960 samples went to stream 1); the server's count starts again
  // with stream 2's voice, so a timed event is sent on that count, and one in stream 1's voice goes untimed.
  EXPECT_EQ(session->voice_samples_sent(), 1920u);
  ASSERT_EQ(session->set_emotion("happy", 0.5f, 1440), AVB_OK);
  ASSERT_EQ(session->play_action("wave", 500), AVB_OK);
  // Interrupt at 13000 on the session's clock: 1000 on the server's. The ack replaces from server pts 2400
  // (session 14400): frames 11-14 go, frame 10 stays.
  ASSERT_EQ(session->playback_progress(13000), AVB_OK);
  ASSERT_EQ(session->interrupt(), AVB_OK);
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_INTERRUPT_ACK, -1, &event));
  EXPECT_EQ(event.values[0], 15u);
  EXPECT_EQ(event.values[1], 14400u);
  EXPECT_EQ(event.values[2], 7u);
  EXPECT_EQ(event.values[3], 9600u);
  auto second = drain_frames(*session);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].index, 10u);
  EXPECT_EQ(second[0].pts, 12000u);
  // The echo: stream 1's [0, 1440), then stream 2's from 12000, cut at the replace point (nothing past 14400).
  std::vector<int16_t> echo(100000);
  size_t count = 0;
  uint64_t start = 0;
  ASSERT_EQ(session->poll_audio(echo.data(), echo.size(), &count, &start), AVB_OK);
  EXPECT_EQ(start, 0u);
  EXPECT_EQ(count, 1440u);  // with its last slice, held until the next echo, released as a hold
  ASSERT_EQ(session->poll_audio(echo.data(), echo.size(), &count, &start), AVB_OK);
  EXPECT_EQ(start, 12000u);
  EXPECT_EQ(count, 2400u);  // [12000, 16800) cut at the replace point, 14400
  EXPECT_EQ(session->poll_audio(echo.data(), echo.size(), &count, &start), AVB_NOT_READY);

  ASSERT_EQ(session->close(), AVB_OK);
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_ENDED, -1, &event));
  EXPECT_EQ(event.code, 0);
  EXPECT_STREQ(event.detail, "token-ended-2");
  {
    std::lock_guard<std::mutex> lock(service.mutex);
    EXPECT_EQ(service.interrupt_played_until, 1000u);
    ASSERT_GE(service.audio.size(), 2u);
    EXPECT_EQ(service.audio[0].first, 1);
    EXPECT_EQ(service.audio[0].second.sequence_number(), 0u);
    EXPECT_FALSE(service.audio[0].second.restart_sequence());
    const auto& resumed = service.audio[1];
    EXPECT_EQ(resumed.first, 2);
    EXPECT_EQ(resumed.second.sequence_number(), 1u);
    EXPECT_TRUE(resumed.second.restart_sequence());
    ASSERT_EQ(service.controls.size(), 2u);
    EXPECT_EQ(service.controls[0].first, 2);
    ASSERT_TRUE(service.controls[0].second.emotion().has_at_voice_sample());
    EXPECT_EQ(service.controls[0].second.emotion().at_voice_sample(), 480u);
    EXPECT_EQ(service.controls[1].second.action().preset(), "wave");
    EXPECT_FALSE(service.controls[1].second.action().has_at_voice_sample());
  }
  session.reset();
  server->Shutdown();
}

TEST(SessionAgainstAScriptedServer, TimedEventsCarryTheirVoiceSampleAndTheCountIsTheVoiceInPackets) {
  RecordingService service;
  int port = 0;
  std::unique_ptr<grpc::Server> server = start_local_server(service, &port);
  ASSERT_GT(port, 0);
  Client client(client_for_port(port));
  SessionOptions options;
  options.npc_id = "npc";
  std::unique_ptr<Session> session = client.open_session_owned(options);
  avb_event event;
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_STATE, AVB_STATE_LIVE, &event));

  EXPECT_EQ(session->voice_samples_sent(), 0u);
  std::vector<int16_t> voice(1000, 100);
  ASSERT_EQ(session->push_pcm(voice.data(), voice.size()), AVB_OK);
  EXPECT_EQ(session->voice_samples_sent(), 960u);  // one 20 ms packet; 40 samples wait for the next
  // A word 10 ms into the voice, and one at the end of the utterance's padding.
  ASSERT_EQ(session->set_emotion("happy", 0.75f, 480), AVB_OK);
  ASSERT_EQ(session->end_utterance(), AVB_OK);
  EXPECT_EQ(session->voice_samples_sent(), 1920u);  // 40 held + 312 look-ahead, padded to a second packet
  ASSERT_EQ(session->play_action("wave", 1920), AVB_OK);
  ASSERT_EQ(session->set_emotion("calm", 1.0f), AVB_OK);
  ASSERT_EQ(session->play_action("nod"), AVB_OK);
  ASSERT_EQ(session->close(), AVB_OK);
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_ENDED, -1, &event));
  EXPECT_EQ(event.code, 0);

  std::lock_guard<std::mutex> lock(service.mutex);
  EXPECT_FALSE(service.config.has_prompt_guidance()) << "unset: the server's default";
  std::vector<v1::ClientMessage::MessageCase> kinds;
  for (const auto& message : service.received) kinds.push_back(message.message_case());
  const std::vector<v1::ClientMessage::MessageCase> expected = {
      v1::ClientMessage::kAudio,  v1::ClientMessage::kEmotion, v1::ClientMessage::kAudio,
      v1::ClientMessage::kEndOfUtterance, v1::ClientMessage::kAction, v1::ClientMessage::kEmotion,
      v1::ClientMessage::kAction};
  ASSERT_EQ(kinds, expected);
  const v1::EmotionEvent& timed_emotion = service.received[1].emotion();
  EXPECT_EQ(timed_emotion.name(), "happy");
  EXPECT_FLOAT_EQ(timed_emotion.intensity(), 0.75f);
  ASSERT_TRUE(timed_emotion.has_at_voice_sample());
  EXPECT_EQ(timed_emotion.at_voice_sample(), 480u);
  const v1::ActionEvent& timed_action = service.received[4].action();
  EXPECT_EQ(timed_action.preset(), "wave");
  ASSERT_TRUE(timed_action.has_at_voice_sample());
  EXPECT_EQ(timed_action.at_voice_sample(), 1920u);
  // Untimed events leave the field out (on the wire too): the server applies them from the next block.
  EXPECT_FALSE(service.received[5].emotion().has_at_voice_sample());
  EXPECT_FALSE(service.received[6].action().has_at_voice_sample());
  std::string wire;
  ASSERT_TRUE(service.received[6].SerializeToString(&wire));
  v1::ClientMessage untimed;
  untimed.mutable_action()->set_preset("nod");
  EXPECT_EQ(wire, untimed.SerializeAsString());
  ASSERT_TRUE(service.received[4].SerializeToString(&wire));
  EXPECT_NE(wire.find(std::string("\x18\x80\x0f", 3)), std::string::npos)  // field 3, varint 1920
      << "at_voice_sample as ActionEvent field 3";

  session.reset();
  server->Shutdown();
}

TEST(SessionAgainstAScriptedServer, ACutConnectionReopensWithoutItsStaleTokenAndWaitsOutTheOldStream) {
  ScriptedRun run({
      accept_then_drop_on_voice("lineage-0", "Socket closed"),
      // Stream 2: the server has not noticed the cut yet.
      refuse(grpc::StatusCode::ABORTED, "npc_id: NPC 'npc' is already in a live session (one session per NPC)"),
      // Stream 3: the server saved the memory past lineage-0 when it noticed: that token is refused as stale.
      [](const v1::SessionConfig& config, StreamScriptService::Stream* stream) {
        if (!config.resume_token().empty()) {
          return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "resume_token does not match");
        }
        return accept_then_end("lineage-3", 96)(config, stream);
      },
  }, /*reset_memory=*/true);
  avb_event event;
  ASSERT_TRUE(run.until_live(&event));
  StreamScriptService& service = run.service;
  Session* session = run.session.get();
  ASSERT_TRUE(run.push_voice());
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_STATE, AVB_STATE_RECONNECTING, &event));
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_STATE, AVB_STATE_LIVE, &event));
  EXPECT_EQ(event.values[0], 96u) << "the NPC continues from the memory the server saved";
  {
    std::lock_guard<std::mutex> lock(service.mutex);
    ASSERT_EQ(service.configs.size(), 3u);
    EXPECT_TRUE(service.configs[0].reset_memory());
    for (size_t i = 1; i < 3; ++i) {
      EXPECT_FALSE(service.configs[i].reset_memory()) << "a reconnect must never reset the NPC";
      EXPECT_EQ(service.configs[i].resume_token(), "") << "the accepted token is stale after a cut";
    }
  }
  ASSERT_EQ(session->close(), AVB_OK);
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_ENDED, -1, &event));
  EXPECT_EQ(event.code, 0);
  EXPECT_STREQ(event.detail, "lineage-3-ended");
}

TEST(SessionAgainstAScriptedServer, AnAbortedFirstOpenEndsTheSession) {
  // No stream of this session was live: the NPC is in someone else's session, which no retry changes.
  ScriptedRun run({refuse(grpc::StatusCode::ABORTED, "npc_id: NPC 'npc' is already in a live session")});
  ASSERT_GT(run.port, 0);
  Session* session = run.session.get();
  avb_event event;
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_ENDED, -1, &event));
  EXPECT_EQ(event.code, static_cast<int32_t>(grpc::StatusCode::ABORTED));
  EXPECT_NE(std::string(event.text).find("already in a live session"), std::string::npos) << event.text;
  EXPECT_EQ(run.service.streams(), 1u);
}

TEST(SessionAgainstAScriptedServer, AResetIsSentUntilAStreamIsAcceptedAndACloseWhileReconnectingEndsAtOnce) {
  ScriptedRun run({
      refuse(grpc::StatusCode::UNAVAILABLE, "generator worker stopped; it is being restarted, retry"),
      accept_then_drop_on_voice("lineage-1", "server is draining"),  // every reopen after it is refused
      refuse(grpc::StatusCode::UNAVAILABLE, "generator worker stopped; it is being restarted, retry"),
  }, /*reset_memory=*/true);
  avb_event event;
  ASSERT_TRUE(run.until_live(&event));
  StreamScriptService& service = run.service;
  Session* session = run.session.get();
  {
    std::lock_guard<std::mutex> lock(service.mutex);
    ASSERT_EQ(service.configs.size(), 2u);
    EXPECT_TRUE(service.configs[1].reset_memory()) << "the first open never reached the NPC: the reset still applies";
  }
  ASSERT_TRUE(run.push_voice());
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_STATE, AVB_STATE_RECONNECTING, &event));
  // Three refused reopens (0.2 + 0.4 + 0.8 s of backoff): the session now waits 1.6 s before the next one.
  const auto deadline = Clock::now() + std::chrono::seconds(10);
  while (service.streams() < 5 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(service.streams(), 5u);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  const size_t streams_at_close = service.streams();
  const auto closed_at = Clock::now();
  ASSERT_EQ(session->close(), AVB_OK);
  ASSERT_TRUE(wait_for(*session, AVB_EVENT_ENDED, -1, &event));
  EXPECT_EQ(event.code, 0);
  EXPECT_STREQ(event.detail, "lineage-1");
  EXPECT_LT(Clock::now() - closed_at, std::chrono::seconds(1)) << "a close does not wait out the backoff";
  EXPECT_EQ(service.streams(), streams_at_close) << "no new stream is opened only to be closed";
}

}  // namespace
}  // namespace avb
