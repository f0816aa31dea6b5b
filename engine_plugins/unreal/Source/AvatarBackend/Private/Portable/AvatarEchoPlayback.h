// Playback of the NPC's echoed voice, which is the A/V clock. Standard C++ only (no engine types), so CI
// compiles and tests it with g++ (tests/engine_plugins/test_unreal_plugin_portable.py); the Unity package's
// EchoPlayback.cs is the same algorithm.
//
// The game thread adds the echoed voice polled from the core (avb_session_poll_audio); the audio render thread
// reads it out at the output's rate and so advances PlayedUntil, the session-clock position of what has been
// handed to the mixer. Subtracting the output's latency gives what the player has heard, which the game
// thread reports (avb_session_playback_progress) and shows frames by (avb_session_poll_due_frame). When the
// voice runs out, the position holds, so the picture waits for the sound.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

namespace avatar_backend {

class EchoPlayback {
 public:
  explicit EchoPlayback(int session_sample_rate, double capacity_seconds = 10.0)
      : session_sample_rate_(session_sample_rate),
        ring_(static_cast<size_t>(std::max(1.0, session_sample_rate * capacity_seconds))) {}

  int SessionSampleRate() const { return session_sample_rate_; }

  // Session-clock position up to which the voice has been handed to the output.
  uint64_t PlayedUntil() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return read_position_;
  }

  size_t BufferedSamples() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return count_;
  }

  // Echoed voice starting at `start` on the session clock. Voice overlapping what is buffered replaces it (the
  // core's answer to an interrupt), voice already played is skipped, a gap is played as silence.
  void Enqueue(const int16_t* samples, size_t sample_count, uint64_t start) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!started_ || (count_ == 0 && start > read_position_)) {
      started_ = true;
      read_position_ = std::max(read_position_, start);
      fraction_ = 0;
    }
    const uint64_t buffered_end = read_position_ + count_;
    if (start < buffered_end) TruncateLocked(start);
    size_t skip = 0;
    if (start < read_position_) {
      skip = static_cast<size_t>(std::min<uint64_t>(read_position_ - start, sample_count));
    } else if (start > buffered_end) {
      const uint64_t gap = std::min<uint64_t>(start - buffered_end, ring_.size());
      for (uint64_t i = 0; i < gap; ++i) AppendLocked(0);
    }
    for (size_t i = skip; i < sample_count; ++i) AppendLocked(samples[i]);
  }

  // Drops the buffered voice from `pts` on (an interrupt's replace_from_pts).
  void DiscardFrom(uint64_t pts) {
    std::lock_guard<std::mutex> lock(mutex_);
    TruncateLocked(pts);
  }

  // Fills `frames` frames of `channels` interleaved float samples at `output_sample_rate` with the voice, every
  // channel the same, silence where none is buffered. Returns the frames that carried voice.
  size_t Read(float* output, size_t frames, int channels, int output_sample_rate) {
    const double step = static_cast<double>(session_sample_rate_) / output_sample_rate;
    size_t played = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (; played < frames && count_ > 0; ++played) {
        const int16_t current = ring_[read_index_];
        const int16_t next = count_ > 1 ? ring_[(read_index_ + 1) % ring_.size()] : current;
        const float value = static_cast<float>((current + (next - current) * fraction_) / 32768.0);
        for (int c = 0; c < channels; ++c) output[played * channels + c] = value;
        fraction_ += step;
        while (fraction_ >= 1 && count_ > 0) {
          AdvanceLocked(1);
          fraction_ -= 1;
        }
      }
    }
    std::fill(output + played * channels, output + frames * channels, 0.0f);
    return played;
  }

  // Plays `session_samples` silently (no audio output): the clock advances over what is buffered, never beyond.
  size_t Skip(size_t session_samples) {
    std::lock_guard<std::mutex> lock(mutex_);
    const size_t skipped = std::min(session_samples, count_);
    AdvanceLocked(skipped);
    return skipped;
  }

 private:
  void AdvanceLocked(size_t samples) {
    read_index_ = (read_index_ + samples) % ring_.size();
    count_ -= samples;
    read_position_ += samples;
  }

  void AppendLocked(int16_t sample) {
    if (count_ == ring_.size()) AdvanceLocked(1);  // full: the oldest voice goes
    ring_[(read_index_ + count_) % ring_.size()] = sample;
    ++count_;
  }

  void TruncateLocked(uint64_t pts) {
    if (pts <= read_position_)
      count_ = 0;
    else if (pts < read_position_ + count_)
      count_ = static_cast<size_t>(pts - read_position_);
  }

  const int session_sample_rate_;
  mutable std::mutex mutex_;
  std::vector<int16_t> ring_;
  size_t read_index_ = 0;
  size_t count_ = 0;
  uint64_t read_position_ = 0;
  double fraction_ = 0;
  bool started_ = false;
};

// What the player hears: what was played minus what is still in the output's buffers.
inline uint64_t HeardUntil(uint64_t played_until, double output_latency_seconds, int session_sample_rate) {
  const uint64_t latency = static_cast<uint64_t>(std::llround(output_latency_seconds * session_sample_rate));
  return played_until > latency ? played_until - latency : 0;
}

}  // namespace avatar_backend
