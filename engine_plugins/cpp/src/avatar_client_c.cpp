// avatar_client_c.cpp: the C ABI (include/avatar_backend/avatar_client.h) over the C++ core: argument checks,
// struct_size handling, and no exception ever crossing into the engine.
#include <cmath>
#include <cstddef>
#include <cstring>
#include <map>
#include <mutex>

#include "avatar_backend/avatar_client.h"
#include "client_core.h"

struct avb_client {
  avb::Client core;
  explicit avb_client(const avb::ClientOptions& options) : core(options) {}
};

namespace {

// avb_session* is the core's Session; its owner is the client that opened it (see owners()).
avb::Session* core(avb_session* session) { return reinterpret_cast<avb::Session*>(session); }

std::string text_or_empty(const char* text) { return text == nullptr ? std::string() : std::string(text); }

size_t copy_message(const std::string& message, char* out, size_t capacity) {
  if (out != nullptr && capacity > 0) {
    const size_t n = std::min(capacity - 1, message.size());
    std::memcpy(out, message.data(), n);
    out[n] = '\0';
  }
  return message.size();
}

bool pixel_format(int32_t value, avb::PixelFormat* out) {
  if (value == AVB_PIXELS_RGBA) *out = avb::PixelFormat::kRgba;
  else if (value == AVB_PIXELS_RGB) *out = avb::PixelFormat::kRgb;
  else return false;
  return true;
}

// Every entry point: an exception (std::bad_alloc, a grpc or libopus surprise) becomes a result; it must
// never unwind into C or C#.
template <typename Body>
avb_result guarded(Body body) {
  try {
    return body();
  } catch (...) {
    return AVB_BAD_ARGUMENT;
  }
}

}  // namespace

// Which client owns each session handle: avb_session_destroy needs it, and after avb_client_destroy (which
// frees its sessions) a late avb_session_destroy of one of them finds nothing and does nothing.
namespace {
std::mutex g_owner_mutex;
std::map<avb::Session*, avb_client*>& owners() {
  static auto* table = new std::map<avb::Session*, avb_client*>();  // never destroyed: safe at exit
  return *table;
}
}  // namespace

extern "C" {

AVB_API uint32_t avb_abi_version(void) { return AVB_ABI_VERSION; }

AVB_API avb_result avb_client_create(const avb_client_config* config, avb_client** out_client) {
  if (config == nullptr || out_client == nullptr || config->struct_size < sizeof(avb_client_config) ||
      config->target == nullptr || config->target[0] == '\0') {
    return AVB_BAD_ARGUMENT;
  }
  return guarded([&] {
    avb::ClientOptions options;
    options.target = config->target;
    options.api_key = text_or_empty(config->api_key);
    options.tls = config->tls != 0;
    options.tls_root_certs_pem = text_or_empty(config->tls_root_certs_pem);
    options.tls_client_cert_pem = text_or_empty(config->tls_client_cert_pem);
    options.tls_client_key_pem = text_or_empty(config->tls_client_key_pem);
    options.connect_timeout_ms = config->connect_timeout_ms == 0 ? 10000 : config->connect_timeout_ms;
    options.keepalive_ms = config->keepalive_ms == 0 ? 30000 : config->keepalive_ms;
    *out_client = new avb_client(options);
    return AVB_OK;
  });
}

AVB_API void avb_client_destroy(avb_client* client) {
  if (client == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(g_owner_mutex);
    for (auto it = owners().begin(); it != owners().end();) {
      it = it->second == client ? owners().erase(it) : std::next(it);
    }
  }
  delete client;  // the core's destructor frees its sessions
}

AVB_API size_t avb_client_last_error(avb_client* client, char* message, size_t capacity) {
  if (client == nullptr) return 0;
  return copy_message(client->core.last_error(), message, capacity);
}

// avb_session_config before prompt_guidance was added: the smallest struct_size accepted.
constexpr size_t kSessionConfigFirstSize = offsetof(avb_session_config, prompt_guidance);

AVB_API avb_result avb_session_open(avb_client* client, const avb_session_config* config,
                                    avb_session** out_session) {
  if (client == nullptr || config == nullptr || out_session == nullptr ||
      config->struct_size < kSessionConfigFirstSize || config->npc_id == nullptr || config->npc_id[0] == '\0') {
    if (client != nullptr) client->core.set_last_error("avb_session_open: a required argument is missing");
    return AVB_BAD_ARGUMENT;
  }
  const uint32_t rate = config->sample_rate == 0 ? 48000 : config->sample_rate;
  if (rate != 48000 && rate != 16000) {
    client->core.set_last_error("avb_session_open: sample_rate must be 48000 or 16000");
    return AVB_BAD_ARGUMENT;
  }
  const bool has_guidance = config->struct_size >= kSessionConfigFirstSize + sizeof(float);
  const float guidance = has_guidance ? config->prompt_guidance : 0.0f;
  const bool has_reconnect_timeout =
      config->struct_size >= offsetof(avb_session_config, reconnect_timeout_ms) + sizeof(uint32_t);
  if (guidance != 0.0f && !(guidance >= 1.0f && std::isfinite(guidance))) {  // NaN fails every comparison
    client->core.set_last_error("avb_session_open: prompt_guidance must be 0 (the server's) or a factor >= 1");
    return AVB_BAD_ARGUMENT;
  }
  return guarded([&] {
    avb::SessionOptions options;
    options.npc_id = config->npc_id;
    options.character_id = text_or_empty(config->character_id);
    options.width = config->width;
    options.height = config->height;
    options.fps = config->fps;
    options.sample_rate = rate;
    options.jpeg_quality = config->jpeg_quality;
    options.reset_memory = config->reset_memory != 0;
    options.reconnect = config->reconnect != 0;
    options.max_buffered_frames = config->max_buffered_frames == 0 ? 96 : config->max_buffered_frames;
    options.prompt_guidance = guidance;
    options.reconnect_timeout_ms = has_reconnect_timeout ? config->reconnect_timeout_ms : 0;
    avb::Session* session = client->core.open_session(options);
    {
      std::lock_guard<std::mutex> lock(g_owner_mutex);
      owners()[session] = client;
    }
    *out_session = reinterpret_cast<avb_session*>(session);
    return AVB_OK;
  });
}

AVB_API avb_result avb_session_close(avb_session* session) {
  if (session == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->close(); });
}

AVB_API void avb_session_destroy(avb_session* session) {
  if (session == nullptr) return;
  avb_client* client = nullptr;
  {
    std::lock_guard<std::mutex> lock(g_owner_mutex);
    auto it = owners().find(core(session));
    if (it == owners().end()) return;  // already freed (by avb_client_destroy)
    client = it->second;
    owners().erase(it);
  }
  client->core.destroy_session(core(session));
}

AVB_API size_t avb_session_last_error(avb_session* session, char* message, size_t capacity) {
  if (session == nullptr) return 0;
  return copy_message(core(session)->last_error(), message, capacity);
}

AVB_API avb_result avb_session_push_pcm(avb_session* session, const int16_t* samples, size_t count) {
  if (session == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->push_pcm(samples, count); });
}

AVB_API avb_result avb_session_push_opus(avb_session* session, const uint8_t* packet, size_t size) {
  if (session == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->push_opus(packet, size); });
}

AVB_API avb_result avb_session_end_utterance(avb_session* session) {
  if (session == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->end_utterance(); });
}

AVB_API uint64_t avb_session_voice_samples_sent(avb_session* session) {
  if (session == nullptr) return 0;
  try {
    return core(session)->voice_samples_sent();
  } catch (...) {
    return 0;
  }
}

AVB_API avb_result avb_session_set_emotion(avb_session* session, const char* name, float intensity) {
  if (session == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->set_emotion(text_or_empty(name), intensity); });
}

AVB_API avb_result avb_session_play_action(avb_session* session, const char* preset) {
  if (session == nullptr || preset == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->play_action(preset); });
}

AVB_API avb_result avb_session_set_emotion_at(avb_session* session, const char* name, float intensity,
                                              uint64_t at_voice_sample) {
  if (session == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->set_emotion(text_or_empty(name), intensity, at_voice_sample); });
}

AVB_API avb_result avb_session_play_action_at(avb_session* session, const char* preset, uint64_t at_voice_sample) {
  if (session == nullptr || preset == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->play_action(preset, at_voice_sample); });
}

AVB_API avb_result avb_session_set_listening(avb_session* session, int32_t listening) {
  if (session == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->set_listening(listening != 0); });
}

AVB_API avb_result avb_session_playback_progress(avb_session* session, uint64_t played_until) {
  if (session == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->playback_progress(played_until); });
}

AVB_API avb_result avb_session_interrupt(avb_session* session) {
  if (session == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->interrupt(); });
}

AVB_API avb_result avb_session_poll_frame(avb_session* session, int32_t pixel_format_value, uint8_t* pixels,
                                          size_t capacity, avb_frame_info* info) {
  avb::PixelFormat format;
  if (session == nullptr || !pixel_format(pixel_format_value, &format)) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->poll_frame(format, pixels, capacity, info); });
}

AVB_API avb_result avb_session_poll_due_frame(avb_session* session, uint64_t playback_pts, int32_t pixel_format_value,
                                              uint8_t* pixels, size_t capacity, avb_frame_info* info) {
  avb::PixelFormat format;
  if (session == nullptr || !pixel_format(pixel_format_value, &format)) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->poll_due_frame(playback_pts, format, pixels, capacity, info); });
}

AVB_API avb_result avb_session_poll_audio(avb_session* session, int16_t* samples, size_t capacity,
                                          size_t* out_count, uint64_t* out_start) {
  if (session == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->poll_audio(samples, capacity, out_count, out_start); });
}

AVB_API avb_result avb_session_poll_event(avb_session* session, avb_event* out_event) {
  if (session == nullptr) return AVB_BAD_ARGUMENT;
  return guarded([&] { return core(session)->poll_event(out_event); });
}

AVB_API avb_result avb_session_get_stats(avb_session* session, avb_stats* out_stats) {
  if (session == nullptr || out_stats == nullptr || out_stats->struct_size < sizeof(avb_stats)) {
    return AVB_BAD_ARGUMENT;
  }
  return guarded([&] {
    core(session)->stats(out_stats);
    return AVB_OK;
  });
}

}  // extern "C"
