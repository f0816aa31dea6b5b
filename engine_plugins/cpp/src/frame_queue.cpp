// frame_queue.cpp: drop-oldest, the A/V clock, interrupt replacement and its hold over the buffered frames.
#include "frame_queue.h"

#include <algorithm>

namespace avb {

void FrameQueue::push(EncodedFrame frame) {
  while (frames_.size() >= capacity_) {
    frames_.pop_front();
    ++dropped_;
  }
  frames_.push_back(std::move(frame));
}

const EncodedFrame* FrameQueue::due(uint64_t playback_pts) const {
  // Frames arrive in pts order, except after an interrupt's jump: scan all and keep the newest due.
  const EncodedFrame* newest = nullptr;
  if (held_from_) {
    if (*held_from_ == 0) return nullptr;
    playback_pts = std::min(playback_pts, *held_from_ - 1);
  }
  for (const EncodedFrame& frame : frames_) {
    if (frame.pts <= playback_pts && (newest == nullptr || frame.pts >= newest->pts)) newest = &frame;
  }
  return newest;
}

const EncodedFrame* FrameQueue::oldest() const {
  if (frames_.empty() || (held_from_ && frames_.front().pts >= *held_from_)) return nullptr;
  return &frames_.front();
}

std::optional<EncodedFrame> FrameQueue::take_oldest() {
  if (oldest() == nullptr) return std::nullopt;
  EncodedFrame frame = std::move(frames_.front());
  frames_.pop_front();
  return frame;
}

std::optional<EncodedFrame> FrameQueue::take_due(uint64_t playback_pts) {
  const EncodedFrame* newest = due(playback_pts);
  if (newest == nullptr) return std::nullopt;
  const uint64_t chosen_pts = newest->pts;
  const uint64_t chosen_index = newest->index;
  std::optional<EncodedFrame> chosen;
  std::deque<EncodedFrame> kept;
  for (EncodedFrame& frame : frames_) {
    if (!chosen && frame.index == chosen_index && frame.pts == chosen_pts) {
      chosen = std::move(frame);
    } else if (frame.pts <= chosen_pts) {
      ++dropped_;  // overtaken by the clock: it would be shown too late
    } else {
      kept.push_back(std::move(frame));
    }
  }
  frames_.swap(kept);
  return chosen;
}

size_t FrameQueue::replace(uint64_t next_frame_index, uint64_t replace_from_pts) {
  const size_t before = frames_.size();
  frames_.erase(std::remove_if(frames_.begin(), frames_.end(),
                               [&](const EncodedFrame& frame) {
                                 return frame.index < next_frame_index && frame.pts >= replace_from_pts;
                               }),
                frames_.end());
  const size_t removed = before - frames_.size();
  replaced_ += removed;
  held_from_.reset();
  return removed;
}

}  // namespace avb
