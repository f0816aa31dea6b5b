// echo_audio.h: the echoed voice (AudioEcho, 16 kHz PCM16 placed on the session clock) converted to the session
// rate by linear interpolation, kept gapless and on the clock, until the engine polls it.
// Not thread-safe: the session guards it with its mutex.
#pragma once

#include <cstdint>
#include <deque>
#include <string>
#include <vector>

namespace avb {

class EchoAudioBuffer {
 public:
  // session_rate must be a whole multiple of the echo rate (48000 or 16000 for 16 kHz echoes).
  explicit EchoAudioBuffer(uint32_t session_rate) : session_rate_(session_rate) {}

  // One AudioEcho: `start` on the session clock (session-rate samples), `pcm` at `echo_rate`. Returns false
  // (and keeps nothing) when the rates do not divide.
  bool push(uint64_t start, uint32_t echo_rate, const int16_t* pcm, size_t count);
  // Up to `capacity` samples of the oldest contiguous run; returns how many, with their start in *out_start.
  size_t poll(int16_t* out, size_t capacity, uint64_t* out_start);
  // An InterruptAck: the audio from `from` on (session clock) is never played.
  void drop_from(uint64_t from);

  uint64_t buffered_samples() const;
  // Samples held in memory, polled ones not yet released included (bounded: see kMaxBufferedSeconds).
  uint64_t held_samples() const;

  // Unpolled echo beyond this many seconds drops its oldest samples (an engine that never polls the echo, a
  // video-only NPC, must not grow the session's memory for hours).
  static constexpr uint32_t kMaxBufferedSeconds = 30;

 private:
  struct Run {
    uint64_t start;
    std::vector<int16_t> samples;
    size_t read = 0;  // samples already polled from the front
  };
  void append(uint64_t start, const int16_t* samples, size_t count);
  void drop_oldest_beyond_cap();
  static void release_read_front(Run& run);  // frees the samples already read (or dropped) from a run's front
  void flush_pending_hold();

  uint32_t session_rate_;
  std::deque<Run> runs_;
  // The last input sample of the previous echo: interpolation towards the next echo's first sample needs
  // that sample, so its slice of output waits for it (at most ratio - 1 samples of delay, never a gap).
  bool has_pending_ = false;
  int16_t pending_value_ = 0;
  uint64_t pending_time_ = 0;  // session clock
  uint32_t pending_ratio_ = 1;
};

}  // namespace avb
