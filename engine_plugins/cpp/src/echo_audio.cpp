// echo_audio.cpp: upsampling of the echoed voice onto the session clock, its polling and interrupt trimming.
#include "echo_audio.h"

#include <algorithm>

namespace avb {

namespace {
// A gapless echo grows one run for the whole session: its polled front is released once it is this long.
constexpr size_t kReleasePolledAt = 16384;
}  // namespace

void EchoAudioBuffer::release_read_front(Run& run) {
  run.samples.erase(run.samples.begin(), run.samples.begin() + static_cast<std::ptrdiff_t>(run.read));
  run.start += run.read;
  run.read = 0;
}

void EchoAudioBuffer::append(uint64_t start, const int16_t* samples, size_t count) {
  if (count == 0) return;
  if (!runs_.empty() && runs_.back().start + runs_.back().samples.size() == start) {
    Run& last = runs_.back();
    last.samples.insert(last.samples.end(), samples, samples + count);
  } else {
    runs_.push_back(Run{start, std::vector<int16_t>(samples, samples + count), 0});
  }
  drop_oldest_beyond_cap();
}

void EchoAudioBuffer::drop_oldest_beyond_cap() {
  const uint64_t cap = static_cast<uint64_t>(kMaxBufferedSeconds) * session_rate_;
  uint64_t excess = buffered_samples();
  excess = excess > cap ? excess - cap : 0;
  while (excess > 0 && !runs_.empty()) {
    Run& front = runs_.front();
    const uint64_t drop = std::min<uint64_t>(excess, front.samples.size() - front.read);
    front.read += drop;
    excess -= drop;
    if (front.read >= front.samples.size()) {
      runs_.pop_front();
    } else if (front.read >= kReleasePolledAt) {
      release_read_front(front);
    }
  }
}

void EchoAudioBuffer::flush_pending_hold() {
  if (!has_pending_) return;
  // No continuation came (a gap or an interrupt): hold the last value for its slice.
  std::vector<int16_t> hold(pending_ratio_, pending_value_);
  append(pending_time_, hold.data(), hold.size());
  has_pending_ = false;
}

bool EchoAudioBuffer::push(uint64_t start, uint32_t echo_rate, const int16_t* pcm, size_t count) {
  if (echo_rate == 0 || session_rate_ % echo_rate != 0) return false;
  const uint32_t ratio = session_rate_ / echo_rate;
  if (count == 0) return true;
  if (ratio == 1) {
    flush_pending_hold();
    append(start, pcm, count);
    return true;
  }
  // The input samples laid out at start + i * ratio; a pending sample that ends right before continues it.
  std::vector<int16_t> input;
  uint64_t first_time = start;
  if (has_pending_ && pending_ratio_ == ratio && pending_time_ + ratio == start) {
    input.push_back(pending_value_);
    first_time = pending_time_;
    has_pending_ = false;
  } else {
    flush_pending_hold();
  }
  input.insert(input.end(), pcm, pcm + count);
  std::vector<int16_t> output;
  output.reserve((input.size() - 1) * ratio);
  for (size_t i = 0; i + 1 < input.size(); ++i) {
    const int32_t from = input[i], to = input[i + 1];
    for (uint32_t k = 0; k < ratio; ++k) {
      output.push_back(static_cast<int16_t>(from + (to - from) * static_cast<int32_t>(k) / static_cast<int32_t>(ratio)));
    }
  }
  append(first_time, output.data(), output.size());
  has_pending_ = true;
  pending_value_ = input.back();
  pending_time_ = first_time + (input.size() - 1) * ratio;
  pending_ratio_ = ratio;
  return true;
}

size_t EchoAudioBuffer::poll(int16_t* out, size_t capacity, uint64_t* out_start) {
  while (!runs_.empty() && runs_.front().read >= runs_.front().samples.size()) runs_.pop_front();
  if (runs_.empty()) return 0;
  Run& run = runs_.front();
  const size_t count = std::min(capacity, run.samples.size() - run.read);
  std::copy_n(run.samples.begin() + static_cast<std::ptrdiff_t>(run.read), count, out);
  if (out_start != nullptr) *out_start = run.start + run.read;
  run.read += count;
  if (run.read >= run.samples.size()) {
    runs_.pop_front();
  } else if (run.read >= kReleasePolledAt && run.read >= run.samples.size() / 2) {
    // Release the polled front (at most as many samples moved as released: amortised constant per sample).
    release_read_front(run);
  }
  return count;
}

void EchoAudioBuffer::drop_from(uint64_t from) {
  if (has_pending_ && pending_time_ >= from) has_pending_ = false;
  while (!runs_.empty()) {
    Run& last = runs_.back();
    if (last.start >= from) {
      runs_.pop_back();
      continue;
    }
    const uint64_t keep = from - last.start;
    if (keep < last.samples.size()) last.samples.resize(keep);
    if (last.read >= last.samples.size()) runs_.pop_back();
    break;
  }
}

uint64_t EchoAudioBuffer::buffered_samples() const {
  uint64_t total = 0;
  for (const Run& run : runs_) total += run.samples.size() - run.read;
  return total;
}

uint64_t EchoAudioBuffer::held_samples() const {
  uint64_t total = 0;
  for (const Run& run : runs_) total += run.samples.size();
  return total;
}

}  // namespace avb
