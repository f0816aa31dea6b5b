// client_core.cpp: the channel (credentials, keepalive, reconnect backoff) and the session thread that owns the
// Converse stream: sends what the engine queued, receives into the frame queue, the echo buffer and the
// events, and reopens the stream when the connection drops (see resume_token.h for the token it sends).
#include "client_core.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cstring>

namespace avb {

namespace v1 = avatar::v1;
using Clock = std::chrono::steady_clock;

namespace {

constexpr size_t kMaxEvents = 1024;
constexpr auto kProgressInterval = std::chrono::milliseconds(100);
constexpr auto kBackoffFirst = std::chrono::milliseconds(200);
constexpr auto kBackoffMax = std::chrono::milliseconds(2000);
// How long after a drop a reopen refused with ABORTED (the NPC's old stream still live on the server) is
// retried: past the server's keepalive timeout (30 s + 10 s), after which it has ended the old stream.
constexpr auto kOldStreamGrace = std::chrono::seconds(60);
// The server refuses keepalive pings more often than every 10 s (grpc.http2.min_ping_interval_without_data_ms).
constexpr uint32_t kMinKeepaliveMs = 10000;

void copy_text(char* out, size_t capacity, const std::string& text) {
  const size_t n = std::min(capacity - 1, text.size());
  std::memcpy(out, text.data(), n);
  out[n] = '\0';
}

// The frame's numbers for the caller (also when its buffer is too small: the size to allocate).
void describe(const EncodedFrame& frame, avb_frame_info* info) {
  if (info == nullptr) return;
  info->index = frame.index;
  info->pts = frame.pts;
  info->audio_start = frame.audio_start;
  info->audio_end = frame.audio_end;
  info->width = frame.width;
  info->height = frame.height;
  info->speaking = frame.speaking ? 1 : 0;
}

avb_event make_event(int32_t type, int32_t code) {
  avb_event event;
  std::memset(&event, 0, sizeof event);
  event.type = type;
  event.code = code;
  return event;
}

std::shared_ptr<grpc::Channel> make_channel(const ClientOptions& options) {
  grpc::ChannelArguments args;
  // Keepalive: a conversation lasts hours and a NAT may forget an idle connection; pings find a dead one.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(std::max(options.keepalive_ms, kMinKeepaliveMs)));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // Come back quickly after a server restart: the session's own loop decides how long to keep trying.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  // Raw RGB frames at large sizes exceed grpc's default 4 MB.
  args.SetMaxReceiveMessageSize(64 * 1024 * 1024);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs_pem;
    ssl.pem_cert_chain = options.tls_client_cert_pem;
    ssl.pem_private_key = options.tls_client_key_pem;
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(options.target, credentials, args);
}

}  // namespace

const char* status_code_name(int code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  return code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN";
}

// --- Client ------------------------------------------------------------------------------------------------

Client::Client(const ClientOptions& options) : options_(options), channel_(make_channel(options)) {}

Client::~Client() {
  std::set<Session*> sessions;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    sessions.swap(sessions_);
  }
  for (Session* session : sessions) delete session;
}

std::unique_ptr<Session> Client::open_session_owned(const SessionOptions& options) {
  return std::make_unique<Session>(*this, options);
}

Session* Client::open_session(const SessionOptions& options) {
  auto session = open_session_owned(options);
  std::lock_guard<std::mutex> lock(mutex_);
  sessions_.insert(session.get());
  return session.release();
}

void Client::destroy_session(Session* session) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (sessions_.erase(session) == 0) return;  // not ours, or already freed by the client's destroy
  }
  delete session;
}

std::string Client::last_error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return last_error_;
}

void Client::set_last_error(std::string message) {
  std::lock_guard<std::mutex> lock(mutex_);
  last_error_ = std::move(message);
}

// --- Session: the engine's side ----------------------------------------------------------------------------

Session::Session(const Client& client, const SessionOptions& options)
    : client_options_(client.options()),
      options_(options),
      channel_(client.channel()),
      stub_(v1::AvatarService::NewStub(client.channel())),
      packetizer_(options.sample_rate),
      frames_(options.max_buffered_frames),
      echo_(options.sample_rate),
      opened_at_(Clock::now()) {
  push_event(make_event(AVB_EVENT_STATE, AVB_STATE_OPENING));
  thread_ = std::thread([this] { run_guarded(); });
}

Session::~Session() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    destroy_requested_ = true;
    if (active_context_ != nullptr) active_context_->TryCancel();
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

avb_result Session::accepting_input() const {
  if (close_requested_ || stream_failed_for_good_ || state_ == AVB_STATE_CLOSED) return AVB_CLOSED;
  return AVB_OK;
}

void Session::enqueue(v1::ClientMessage message) {
  outbox_.push_back(std::move(message));
  wake_.notify_all();
}

avb_result Session::close() {
  std::lock_guard<std::mutex> lock(mutex_);
  close_requested_ = true;
  wake_.notify_all();
  return AVB_OK;
}

avb_result Session::push_pcm(const int16_t* samples, size_t count) {
  if (samples == nullptr && count > 0) return AVB_BAD_ARGUMENT;
  std::lock_guard<std::mutex> lock(mutex_);
  if (avb_result closed = accepting_input(); closed != AVB_OK) return closed;
  try {
    for (OpusPacket& packet : packetizer_.push(samples, count)) {
      v1::ClientMessage message;
      auto* audio = message.mutable_audio();
      audio->set_sequence_number(packet.sequence_number);
      audio->set_payload(std::move(packet.payload));
      audio->set_restart_sequence(packet.restart_sequence);
      enqueue(std::move(message));
    }
  } catch (const std::exception& error) {
    last_error_ = error.what();
    return AVB_BAD_ARGUMENT;
  }
  return AVB_OK;
}

avb_result Session::push_opus(const uint8_t* packet, size_t size) {
  if (packet == nullptr || size == 0) return AVB_BAD_ARGUMENT;
  std::lock_guard<std::mutex> lock(mutex_);
  if (avb_result closed = accepting_input(); closed != AVB_OK) return closed;
  OpusPacket numbered = packetizer_.number(std::string(reinterpret_cast<const char*>(packet), size));
  v1::ClientMessage message;
  auto* audio = message.mutable_audio();
  audio->set_sequence_number(numbered.sequence_number);
  audio->set_payload(std::move(numbered.payload));
  audio->set_restart_sequence(numbered.restart_sequence);
  enqueue(std::move(message));
  return AVB_OK;
}

avb_result Session::end_utterance() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (avb_result closed = accepting_input(); closed != AVB_OK) return closed;
  try {
    for (OpusPacket& packet : packetizer_.end_utterance()) {
      v1::ClientMessage message;
      auto* audio = message.mutable_audio();
      audio->set_sequence_number(packet.sequence_number);
      audio->set_payload(std::move(packet.payload));
      audio->set_restart_sequence(packet.restart_sequence);
      enqueue(std::move(message));
    }
  } catch (const std::exception& error) {
    last_error_ = error.what();
    return AVB_BAD_ARGUMENT;
  }
  v1::ClientMessage message;
  message.mutable_end_of_utterance();
  enqueue(std::move(message));
  return AVB_OK;
}

avb_result Session::set_emotion(const std::string& name, float intensity,
                                std::optional<uint64_t> at_voice_sample) {
  return send([&](v1::ClientMessage& message) {
    message.mutable_emotion()->set_name(name);
    message.mutable_emotion()->set_intensity(intensity);
    if (at_voice_sample) message.mutable_emotion()->set_at_voice_sample(*at_voice_sample);
  });
}

avb_result Session::play_action(const std::string& preset, std::optional<uint64_t> at_voice_sample) {
  return send([&](v1::ClientMessage& message) {
    message.mutable_action()->set_preset(preset);
    if (at_voice_sample) message.mutable_action()->set_at_voice_sample(*at_voice_sample);
  });
}

avb_result Session::set_listening(bool listening) {
  return send([&](v1::ClientMessage& message) { message.mutable_listening()->set_listening(listening); });
}

avb_result Session::playback_progress(uint64_t played_until) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (avb_result closed = accepting_input(); closed != AVB_OK) return closed;
  if (!played_until_ || *played_until_ != played_until) playback_unsent_ = true;
  played_until_ = played_until;
  wake_.notify_all();  // the thread sends it when 100 ms have passed since the last one
  return AVB_OK;
}

avb_result Session::interrupt() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (avb_result closed = accepting_input(); closed != AVB_OK) return closed;
  packetizer_.drop_remainder();  // held voice would never be heard
  v1::ClientMessage message;
  auto* request = message.mutable_interrupt();
  if (played_until_) {
    request->set_played_until(to_server_clock(*played_until_));
    frames_.hold_from(*played_until_);  // not heard: the ack replaces them
  }
  enqueue(std::move(message));
  return AVB_OK;
}

uint64_t Session::voice_samples_sent() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return packetizer_.samples_in_packets();
}

void Session::to_stream_voice_count(v1::ClientMessage* message) const {
  auto rebase = [this](auto* event) {
    if (!event->has_at_voice_sample()) return;
    if (event->at_voice_sample() >= stream_voice_start_) {
      event->set_at_voice_sample(event->at_voice_sample() - stream_voice_start_);
    } else {
      // Voice of an earlier stream, which this one never had: the event applies from the next block, as the
      // contract does for a point already on video.
      event->clear_at_voice_sample();
    }
  };
  if (message->has_emotion()) rebase(message->mutable_emotion());
  if (message->has_action()) rebase(message->mutable_action());
}

avb_result Session::poll_decoded(std::optional<EncodedFrame> frame, PixelFormat format, uint8_t* pixels,
                                 size_t capacity, avb_frame_info* info) {
  std::string error;
  bool decoded;
  {
    std::lock_guard<std::mutex> lock(decoder_mutex_);
    decoded = decoder_.decode(*frame, format, pixels, capacity, &error);
  }
  describe(*frame, info);
  if (!decoded) {
    std::lock_guard<std::mutex> lock(mutex_);
    last_error_ = "frame " + std::to_string(frame->index) + ": " + error;
    return AVB_BAD_ARGUMENT;
  }
  return AVB_OK;
}

avb_result Session::poll_frame(PixelFormat format, uint8_t* pixels, size_t capacity, avb_frame_info* info) {
  if (pixels == nullptr) return AVB_BAD_ARGUMENT;
  std::optional<EncodedFrame> frame;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const EncodedFrame* oldest = frames_.oldest();
    if (oldest == nullptr) return state_ == AVB_STATE_CLOSED ? AVB_CLOSED : AVB_NOT_READY;
    if (capacity < static_cast<size_t>(oldest->width) * oldest->height * bytes_per_pixel(format)) {
      describe(*oldest, info);
      return AVB_BUFFER_TOO_SMALL;
    }
    frame = frames_.take_oldest();
  }
  return poll_decoded(std::move(frame), format, pixels, capacity, info);
}

avb_result Session::poll_due_frame(uint64_t playback_pts, PixelFormat format, uint8_t* pixels, size_t capacity,
                                   avb_frame_info* info) {
  if (pixels == nullptr) return AVB_BAD_ARGUMENT;
  std::optional<EncodedFrame> frame;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const EncodedFrame* due = frames_.due(playback_pts);
    if (due == nullptr) {
      return state_ == AVB_STATE_CLOSED && frames_.size() == 0 ? AVB_CLOSED : AVB_NOT_READY;
    }
    if (capacity < static_cast<size_t>(due->width) * due->height * bytes_per_pixel(format)) {
      describe(*due, info);
      return AVB_BUFFER_TOO_SMALL;
    }
    frame = frames_.take_due(playback_pts);
  }
  return poll_decoded(std::move(frame), format, pixels, capacity, info);
}

avb_result Session::poll_audio(int16_t* samples, size_t capacity, size_t* out_count, uint64_t* out_start) {
  if (samples == nullptr || capacity == 0) return AVB_BAD_ARGUMENT;
  std::lock_guard<std::mutex> lock(mutex_);
  uint64_t start = 0;
  const size_t count = echo_.poll(samples, capacity, &start);
  if (out_count != nullptr) *out_count = count;
  if (out_start != nullptr) *out_start = start;
  if (count == 0) return state_ == AVB_STATE_CLOSED ? AVB_CLOSED : AVB_NOT_READY;
  return AVB_OK;
}

avb_result Session::poll_event(avb_event* out_event) {
  if (out_event == nullptr) return AVB_BAD_ARGUMENT;
  std::lock_guard<std::mutex> lock(mutex_);
  if (events_.empty()) return AVB_NOT_READY;
  *out_event = events_.front();
  events_.pop_front();
  return AVB_OK;
}

void Session::stats(avb_stats* out) const {
  std::lock_guard<std::mutex> lock(mutex_);
  out->state = state_;
  out->frames_received = frames_received_;
  out->frames_dropped = frames_.dropped();
  out->buffered_frames = static_cast<uint32_t>(frames_.size());
  out->buffered_audio_samples = echo_.buffered_samples();
  out->generated_fps = generated_fps_;
  out->first_frame_latency_ms = first_frame_latency_ms_;
  out->reconnects = reconnects_;
}

std::string Session::last_error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return last_error_;
}

void Session::push_event(const avb_event& event) {
  if (events_.size() >= kMaxEvents) events_.pop_front();  // an engine that never polls events loses the oldest
  events_.push_back(event);
}

void Session::set_state(int32_t state) {
  if (state_ == state) return;
  state_ = state;
  push_event(make_event(AVB_EVENT_STATE, state));
}

// --- Session: the stream's thread --------------------------------------------------------------------------

bool Session::wait_connected() {
  const auto deadline = Clock::now() + std::chrono::milliseconds(client_options_.connect_timeout_ms == 0
                                                                     ? 10000
                                                                     : client_options_.connect_timeout_ms);
  while (Clock::now() < deadline) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (destroy_requested_) return false;
    }
    const grpc_connectivity_state state = channel_->GetState(true);
    if (state == GRPC_CHANNEL_READY) return true;
    // Short waits so that a destroy is never held up for long.
    channel_->WaitForStateChange(state, std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  }
  return false;
}

grpc::Status Session::run_stream(std::string* trailer_token) {
  if (!wait_connected()) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (destroy_requested_) return grpc::Status::CANCELLED;
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "could not connect to " + client_options_.target);
  }
  grpc::ClientContext context;
  if (!client_options_.api_key.empty()) context.AddMetadata("authorization", "Bearer " + client_options_.api_key);

  v1::ClientMessage config_message;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (destroy_requested_) return grpc::Status::CANCELLED;
    active_context_ = &context;
    reader_done_ = false;
    auto* config = config_message.mutable_config();
    config->set_npc_id(options_.npc_id);
    config->set_character_id(options_.character_id);
    config->mutable_video()->set_width(options_.width);
    config->mutable_video()->set_height(options_.height);
    config->mutable_video()->set_fps(options_.fps);
    config->mutable_video()->set_codec(v1::VIDEO_CODEC_JPEG);
    config->mutable_video()->set_jpeg_quality(options_.jpeg_quality);
    config->mutable_audio()->set_codec(v1::AUDIO_CODEC_OPUS);
    config->mutable_audio()->set_sample_rate(options_.sample_rate);
    config->mutable_audio()->set_channels(1);
    config->mutable_audio()->set_opus_pre_skip(
        static_cast<uint32_t>(packetizer_.lookahead_samples()) * 48000 / options_.sample_rate);
    // Only until a stream was accepted may it reset the memory (a first open that never reached the server
    // still must); a reconnect continues it, from the saved token's state when the server gave one.
    config->set_reset_memory(options_.reset_memory && !accepted_once_);
    config->set_resume_token(resume_tokens_.for_reopen());
    if (options_.prompt_guidance != 0.0f) config->set_prompt_guidance(options_.prompt_guidance);
  }

  std::unique_ptr<Stream> stream = stub_->Converse(&context);
  bool writable = stream->Write(config_message);
  std::string reader_failure;
  std::thread reader([&] {
    v1::ServerMessage message;
    try {
      while (stream->Read(&message)) handle(message);
    } catch (const std::exception& err) {  // e.g. no memory for a frame: this stream ends, not the game
      reader_failure = err.what();
      context.TryCancel();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    reader_done_ = true;
    wake_.notify_all();
  });

  std::unique_lock<std::mutex> lock(mutex_);
  bool writes_done = false;
  while (writable && !reader_done_ && !destroy_requested_) {
    std::optional<v1::ClientMessage> next;
    if (!outbox_.empty()) {
      next = std::move(outbox_.front());
      outbox_.pop_front();
      to_stream_voice_count(&*next);
    } else if (playback_unsent_ && played_until_ && Clock::now() - last_progress_sent_ >= kProgressInterval) {
      next.emplace();
      next->mutable_playback()->set_played_until(to_server_clock(*played_until_));
      playback_unsent_ = false;
      last_progress_sent_ = Clock::now();
    }
    if (next) {
      lock.unlock();
      writable = stream->Write(*next);  // may wait for HTTP/2 flow control: this thread's job, not the engine's
      lock.lock();
      continue;
    }
    if (close_requested_ && !writes_done) {
      lock.unlock();
      stream->WritesDone();
      lock.lock();
      writes_done = true;
      continue;
    }
    wake_.wait_for(lock, playback_unsent_ ? kProgressInterval / 2 : std::chrono::milliseconds(500));
  }
  if (destroy_requested_) context.TryCancel();
  lock.unlock();
  reader.join();
  grpc::Status status = stream->Finish();
  lock.lock();
  active_context_ = nullptr;
  const auto& trailers = context.GetServerTrailingMetadata();
  auto token = trailers.find("resume-token");
  if (token != trailers.end()) trailer_token->assign(token->second.data(), token->second.size());
  if (!reader_failure.empty()) {
    return grpc::Status(grpc::StatusCode::INTERNAL, "the client core failed on a server message: " + reader_failure);
  }
  return status;
}

void Session::run_guarded() {
  try {
    run();
  } catch (const std::exception& err) {  // an exception must not leave this thread: it would end the game
    std::lock_guard<std::mutex> lock(mutex_);
    last_error_ = std::string("INTERNAL: the client core failed: ") + err.what();
    stream_failed_for_good_ = true;
    avb_event ended = make_event(AVB_EVENT_ENDED, static_cast<int32_t>(grpc::StatusCode::INTERNAL));
    copy_text(ended.text, sizeof ended.text, last_error_);
    copy_text(ended.detail, sizeof ended.detail, resume_tokens_.latest());
    push_event(ended);
    set_state(AVB_STATE_CLOSED);
  }
}

void Session::run() {
  auto backoff = kBackoffFirst;
  std::optional<Clock::time_point> trying_since;  // since when no stream has been live (reconnect_timeout_ms)
  while (true) {
    std::string trailer_token;
    const grpc::Status status = run_stream(&trailer_token);
    std::unique_lock<std::mutex> lock(mutex_);
    resume_tokens_.on_trailer(trailer_token);
    frames_.release_hold();  // an interrupt's ack never comes after its stream ended
    if (destroy_requested_) {
      state_ = AVB_STATE_CLOSED;
      return;
    }
    // A dropped connection shows as UNAVAILABLE, or as CANCELLED when a stopping server cancels the stream
    // (this client cancels only on destroy, handled above).
    const grpc::StatusCode code = status.error_code();
    const bool dropped = code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::CANCELLED;
    if (dropped && state_ == AVB_STATE_LIVE) dropped_at_ = Clock::now();
    // A reopen can reach the server before it has noticed the drop (at once for a closed connection, after its
    // keepalive timeout for a silent one): until then the NPC's old stream is live and the reopen is ABORTED.
    const bool old_stream_still_live = code == grpc::StatusCode::ABORTED && dropped_at_ &&
                                       Clock::now() - *dropped_at_ < kOldStreamGrace;
    if (state_ == AVB_STATE_LIVE || !trying_since) trying_since = Clock::now();
    const auto timeout = std::chrono::milliseconds(options_.reconnect_timeout_ms);
    const bool given_up = options_.reconnect_timeout_ms > 0 && Clock::now() - *trying_since >= timeout;
    const bool reconnectable =
        (dropped || old_stream_still_live) && options_.reconnect && !close_requested_ && !given_up;
    if (!status.ok()) {
      last_error_ = std::string(status_code_name(status.error_code())) + ": " + status.error_message();
      if (given_up && options_.reconnect) {
        last_error_ = "no stream for " + std::to_string(options_.reconnect_timeout_ms) +
                      " ms (reconnect_timeout_ms), the last attempt: " + last_error_;
      }
    }
    if (!reconnectable) {
      stream_failed_for_good_ = true;
      avb_event ended = make_event(AVB_EVENT_ENDED, status.error_code());
      copy_text(ended.text, sizeof ended.text, status.ok() ? std::string() : last_error_);
      copy_text(ended.detail, sizeof ended.detail, resume_tokens_.latest());
      push_event(ended);
      set_state(AVB_STATE_CLOSED);
      return;
    }
    // Reopen: a new server session whose clock starts at 0; ours continues after what was received.
    if (state_ == AVB_STATE_LIVE) backoff = kBackoffFirst;
    set_state(AVB_STATE_RECONNECTING);
    ++reconnects_;
    clock_offset_ = received_end_;
    packetizer_.restart_stream();
    stream_voice_start_ = packetizer_.samples_in_packets();
    // Unsent voice belongs to the old stream's clock and encoder state; control messages still apply.
    outbox_.erase(std::remove_if(outbox_.begin(), outbox_.end(),
                                 [](const v1::ClientMessage& m) { return m.has_audio(); }),
                  outbox_.end());
    // Never wait past the give-up time: the next attempt is the last one then.
    auto wait = backoff;
    if (options_.reconnect_timeout_ms > 0) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*trying_since + timeout - Clock::now());
      wait = std::max(std::chrono::milliseconds(0), std::min(wait, left));
    }
    wake_.wait_for(lock, wait, [this] { return destroy_requested_ || close_requested_; });
    backoff = std::min(backoff * 2, std::chrono::duration_cast<std::chrono::milliseconds>(kBackoffMax));
    if (destroy_requested_) {
      state_ = AVB_STATE_CLOSED;
      return;
    }
    if (close_requested_) {  // closed while reconnecting: no stream is open to half-close, the session ends here
      stream_failed_for_good_ = true;
      avb_event ended = make_event(AVB_EVENT_ENDED, 0);
      copy_text(ended.detail, sizeof ended.detail, resume_tokens_.latest());
      push_event(ended);
      set_state(AVB_STATE_CLOSED);
      return;
    }
  }
}

void Session::handle(const v1::ServerMessage& message) {
  std::lock_guard<std::mutex> lock(mutex_);
  switch (message.message_case()) {
    case v1::ServerMessage::kAccepted: {
      resume_tokens_.on_accepted(message.accepted().resume_token());
      accepted_once_ = true;
      dropped_at_.reset();
      avb_event live = make_event(AVB_EVENT_STATE, AVB_STATE_LIVE);
      live.values[0] = message.accepted().start_frame_index();
      live.values[1] = message.accepted().video().width();
      live.values[2] = message.accepted().video().height();
      live.values[3] = message.accepted().video().fps();
      copy_text(live.text, sizeof live.text, message.accepted().session_id());
      copy_text(live.detail, sizeof live.detail, message.accepted().resume_token());
      state_ = AVB_STATE_LIVE;
      push_event(live);
      break;
    }
    case v1::ServerMessage::kFrame: {
      const v1::VideoFrame& wire = message.frame();
      if (frames_received_++ == 0) {
        first_frame_latency_ms_ =
            std::chrono::duration<double, std::milli>(Clock::now() - opened_at_).count();
      }
      EncodedFrame frame;
      frame.index = wire.index();
      frame.pts = wire.pts() + clock_offset_;
      frame.audio_start = wire.audio_start() + clock_offset_;
      frame.audio_end = wire.audio_end() + clock_offset_;
      frame.width = wire.width();
      frame.height = wire.height();
      frame.speaking = wire.speaking();
      frame.codec = wire.codec() == v1::VIDEO_CODEC_RAW_RGB ? FrameCodec::kRawRgb : FrameCodec::kJpeg;
      frame.data = wire.data();
      received_end_ = std::max(received_end_, frame.audio_end);
      frames_.push(std::move(frame));
      break;
    }
    case v1::ServerMessage::kAudioEcho: {
      const v1::AudioEcho& echo = message.audio_echo();
      const std::string& bytes = echo.pcm16();
      std::vector<int16_t> pcm(bytes.size() / 2);
      for (size_t i = 0; i < pcm.size(); ++i) {  // little-endian on the wire, whatever the host
        pcm[i] = static_cast<int16_t>(static_cast<uint8_t>(bytes[2 * i]) |
                                      (static_cast<uint16_t>(static_cast<uint8_t>(bytes[2 * i + 1])) << 8));
      }
      const uint64_t start = echo.start() + clock_offset_;
      if (echo_.push(start, echo.sample_rate(), pcm.data(), pcm.size()) && echo.sample_rate() > 0) {
        const uint64_t end = start + pcm.size() * (options_.sample_rate / echo.sample_rate());
        received_end_ = std::max(received_end_, end);
      }
      break;
    }
    case v1::ServerMessage::kStats:
      generated_fps_ = message.stats().generated_fps();
      break;
    case v1::ServerMessage::kEvent: {
      const v1::SessionEvent& wire = message.event();
      avb_event event = make_event(AVB_EVENT_SERVER, wire.code());
      copy_text(event.text, sizeof event.text, wire.message());
      std::string details;
      for (const auto& [key, value] : wire.details()) {
        details += (details.empty() ? "" : "&") + key + "=" + value;
      }
      copy_text(event.detail, sizeof event.detail, details);
      auto timeline_end = wire.details().find("timeline_end");
      if (timeline_end != wire.details().end()) {
        event.values[0] = std::strtoull(timeline_end->second.c_str(), nullptr, 10) + clock_offset_;
      }
      push_event(event);
      break;
    }
    case v1::ServerMessage::kInterruptAck: {
      const v1::InterruptAck& ack = message.interrupt_ack();
      const uint64_t replace_from = ack.replace_from_pts() + clock_offset_;
      frames_.replace(ack.next_frame_index(), replace_from);
      echo_.drop_from(replace_from);
      received_end_ = replace_from;
      avb_event event = make_event(AVB_EVENT_INTERRUPT_ACK, 0);
      event.values[0] = ack.next_frame_index();
      event.values[1] = replace_from;
      event.values[2] = ack.dropped_samples();
      event.values[3] = ack.unheard_samples();
      push_event(event);
      break;
    }
    case v1::ServerMessage::kEnded:
      resume_tokens_.on_ended(message.ended().resume_token());
      break;
    default:
      break;  // a message this client does not know yet
  }
}

}  // namespace avb
