// frame_queue.h: the session's received frames, still encoded, until the engine polls them: bounded with
// drop-oldest, the A/V clock (the newest frame due at a playback position), interrupt replacement and the hold
// between an interrupt and its ack.
// Not thread-safe: the session guards it with its mutex.
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>

namespace avb {

enum class FrameCodec { kJpeg, kRawRgb };

struct EncodedFrame {
  uint64_t index = 0;
  uint64_t pts = 0;
  uint64_t audio_start = 0, audio_end = 0;
  uint32_t width = 0, height = 0;
  bool speaking = false;
  FrameCodec codec = FrameCodec::kJpeg;
  std::string data;
};

class FrameQueue {
 public:
  explicit FrameQueue(size_t capacity) : capacity_(capacity == 0 ? 1 : capacity) {}

  // Appends a frame; when full, the oldest goes first (counted in dropped()).
  void push(EncodedFrame frame);
  // The oldest frame, without taking it; nullptr when none, or when it is held.
  const EncodedFrame* oldest() const;
  // The newest frame whose pts <= playback_pts and is not held, without taking it; nullptr when none is due.
  const EncodedFrame* due(uint64_t playback_pts) const;
  // Takes the oldest frame (none while it is held).
  std::optional<EncodedFrame> take_oldest();
  // Takes the newest due frame and drops (and counts) the older ones it overtakes.
  std::optional<EncodedFrame> take_due(uint64_t playback_pts);
  // An interrupt sent when playback had reached played_until: the frames from there on were not heard and the
  // ack is about to replace them, so none of them is given out until replace() or release_hold().
  void hold_from(uint64_t played_until) { held_from_ = played_until; }
  // The interrupt's ack will not come (its stream ended): the held frames are given out again.
  void release_hold() { held_from_.reset(); }
  // An InterruptAck: drops the frames with index < next_frame_index and pts >= replace_from_pts, and ends
  // the hold.
  size_t replace(uint64_t next_frame_index, uint64_t replace_from_pts);

  size_t size() const { return frames_.size(); }
  uint64_t dropped() const { return dropped_; }
  uint64_t replaced() const { return replaced_; }

 private:
  size_t capacity_;
  std::deque<EncodedFrame> frames_;
  uint64_t dropped_ = 0;
  uint64_t replaced_ = 0;
  std::optional<uint64_t> held_from_;
};

}  // namespace avb
