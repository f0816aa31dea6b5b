// client_core.h: the C++ API of the native client core. A Client holds one gRPC channel to the server; a Session
// is one NPC conversation (AvatarService.Converse) whose stream a background thread owns. Every method is
// thread-safe and returns without waiting for the network; the C ABI (avatar_client_c.cpp) is a thin layer
// over these classes.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include "avatar/v1/avatar_service.grpc.pb.h"
#include "avatar_backend/avatar_client.h"
#include "echo_audio.h"
#include "frame_queue.h"
#include "jpeg_decoder.h"
#include "opus_packetizer.h"
#include "resume_token.h"

namespace avb {

struct ClientOptions {
  std::string target;
  std::string api_key;
  bool tls = false;
  std::string tls_root_certs_pem, tls_client_cert_pem, tls_client_key_pem;
  uint32_t connect_timeout_ms = 10000;
  uint32_t keepalive_ms = 30000;
};

struct SessionOptions {
  std::string npc_id;
  std::string character_id;
  uint32_t width = 0, height = 0, fps = 0;
  uint32_t sample_rate = 48000;
  uint32_t jpeg_quality = 0;
  bool reset_memory = false;
  bool reconnect = false;
  uint32_t max_buffered_frames = 96;
  float prompt_guidance = 0.0f;  // 0: the server's (SessionConfig.prompt_guidance left unset)
  uint32_t reconnect_timeout_ms = 0;  // with reconnect: give up after this long without a live stream (0: never)
};

class Session;

class Client {
 public:
  explicit Client(const ClientOptions& options);
  ~Client();  // destroys every session still open

  std::unique_ptr<Session> open_session_owned(const SessionOptions& options);  // not registered
  Session* open_session(const SessionOptions& options);                     // registered, freed by destroy
  void destroy_session(Session* session);

  const ClientOptions& options() const { return options_; }
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  std::string last_error() const;
  void set_last_error(std::string message);

 private:
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  mutable std::mutex mutex_;
  std::set<Session*> sessions_;
  std::string last_error_;
};

class Session {
 public:
  Session(const Client& client, const SessionOptions& options);
  ~Session();  // cancels the stream if it is still open and joins the thread
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  avb_result close();
  avb_result push_pcm(const int16_t* samples, size_t count);
  avb_result push_opus(const uint8_t* packet, size_t size);
  avb_result end_utterance();
  avb_result set_emotion(const std::string& name, float intensity,
                         std::optional<uint64_t> at_voice_sample = std::nullopt);
  avb_result play_action(const std::string& preset, std::optional<uint64_t> at_voice_sample = std::nullopt);
  avb_result set_listening(bool listening);
  avb_result playback_progress(uint64_t played_until);
  avb_result interrupt();
  // Voice samples sent on this session at its rate (what at_voice_sample counts): see avatar_client.h.
  uint64_t voice_samples_sent() const;

  avb_result poll_frame(PixelFormat format, uint8_t* pixels, size_t capacity, avb_frame_info* info);
  avb_result poll_due_frame(uint64_t playback_pts, PixelFormat format, uint8_t* pixels, size_t capacity,
                            avb_frame_info* info);
  avb_result poll_audio(int16_t* samples, size_t capacity, size_t* out_count, uint64_t* out_start);
  avb_result poll_event(avb_event* out_event);
  void stats(avb_stats* out) const;
  std::string last_error() const;

 private:
  using Stream = grpc::ClientReaderWriter<avatar::v1::ClientMessage, avatar::v1::ServerMessage>;

  void run();
  void run_guarded();  // run(), an exception ending the session with INTERNAL instead of the process
  // One stream, from SessionConfig to its final status.
  grpc::Status run_stream(std::string* trailer_token);
  bool wait_connected();
  void handle(const avatar::v1::ServerMessage& message);
  void set_state(int32_t state);
  void push_event(const avb_event& event);
  void enqueue(avatar::v1::ClientMessage message);
  avb_result accepting_input() const;  // AVB_OK while messages can still be sent
  // Queues the message ``fill`` writes, once the session still accepts input (a control event of the client).
  template <typename Fill>
  avb_result send(Fill&& fill) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (avb_result closed = accepting_input(); closed != AVB_OK) return closed;
    avatar::v1::ClientMessage message;
    fill(message);
    enqueue(std::move(message));
    return AVB_OK;
  }
  avb_result poll_decoded(std::optional<EncodedFrame> frame, PixelFormat format, uint8_t* pixels,
                          size_t capacity, avb_frame_info* info);
  uint64_t to_server_clock(uint64_t engine_position) const {
    return engine_position > clock_offset_ ? engine_position - clock_offset_ : 0;
  }
  // Rewrites a timed event's at_voice_sample from the session's count to the current stream's, as it is sent.
  void to_stream_voice_count(avatar::v1::ClientMessage* message) const;

  const ClientOptions client_options_;
  const SessionOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<avatar::v1::AvatarService::Stub> stub_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<avatar::v1::ClientMessage> outbox_;
  OpusPacketizer packetizer_;
  FrameQueue frames_;
  EchoAudioBuffer echo_;
  std::deque<avb_event> events_;
  ResumeTokenBook resume_tokens_;
  int32_t state_ = AVB_STATE_OPENING;
  bool close_requested_ = false;
  bool destroy_requested_ = false;
  bool stream_failed_for_good_ = false;
  bool reader_done_ = false;
  grpc::ClientContext* active_context_ = nullptr;
  std::optional<uint64_t> played_until_;     // engine clock
  bool playback_unsent_ = false;
  std::chrono::steady_clock::time_point last_progress_sent_{};
  // After a reconnect the server's clock starts again at 0; the engine's continues from where the previous
  // stream's audio and video ended, so that echoed audio stays gapless and pts keep increasing.
  uint64_t clock_offset_ = 0;
  uint64_t received_end_ = 0;                     // engine clock: end of the audio/video received so far
  // The server counts voice samples from its stream's first audio; the engine's count (the packetizer's) runs
  // on across reconnects. This is the engine's count where the current stream's began.
  uint64_t stream_voice_start_ = 0;
  uint64_t frames_received_ = 0;
  double generated_fps_ = 0;
  double first_frame_latency_ms_ = 0;
  uint32_t reconnects_ = 0;
  bool accepted_once_ = false;                    // a stream of this session was accepted
  std::optional<std::chrono::steady_clock::time_point> dropped_at_;  // when a live stream dropped, until reopened
  std::chrono::steady_clock::time_point opened_at_;
  std::string last_error_;

  std::mutex decoder_mutex_;
  FrameDecoder decoder_;

  std::thread thread_;  // last: started once everything above exists
};

// "UNAVAILABLE" for grpc::StatusCode::UNAVAILABLE, ...
const char* status_code_name(int code);

}  // namespace avb
