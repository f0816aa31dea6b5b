// The NPC's voice on its way in: float audio of any rate and channel count (a decoded USoundWave, the
// AudioCapture module's callback) made into mono int16 at the session's rate and handed on in whole 20 ms
// chunks. Standard C++ only, tested with g++ in CI; the Unity package's VoiceChunker.cs is the same algorithm.
// One writer thread at a time; no allocation after construction.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace avatar_backend {

class VoiceChunker {
 public:
  explicit VoiceChunker(int session_sample_rate, int chunk_milliseconds = 20)
      : session_sample_rate_(session_sample_rate),
        chunk_(static_cast<size_t>(session_sample_rate) * chunk_milliseconds / 1000) {}

  int SessionSampleRate() const { return session_sample_rate_; }
  size_t ChunkSamples() const { return chunk_.size(); }

  // Adds `frames` frames of interleaved audio and hands on every chunk that fills up to `sink(const int16_t*
  // samples, size_t count)` (a template, not std::function, so the audio thread never allocates). The
  // resampler is linear and continuous across calls; a new source rate starts it again.
  template <typename Sink>
  void Write(const float* interleaved, size_t frames, int channels, int sample_rate, Sink&& sink) {
    if (frames == 0 || channels <= 0 || sample_rate <= 0) return;
    if (sample_rate != source_sample_rate_) {
      source_sample_rate_ = sample_rate;
      phase_ = 0;
      previous_ = 0;
    }
    const double step = static_cast<double>(sample_rate) / session_sample_rate_;
    const double last = static_cast<double>(frames - 1);
    while (phase_ <= last) {
      const long index = static_cast<long>(std::floor(phase_));
      const double weight = phase_ - index;
      const float a = index < 0 ? previous_ : Mono(interleaved, static_cast<size_t>(index), channels);
      const float b = weight == 0 ? a : Mono(interleaved, static_cast<size_t>(index + 1), channels);
      Emit(a + static_cast<float>((b - a) * weight), sink);
      phase_ += step;
    }
    phase_ -= static_cast<double>(frames);
    previous_ = Mono(interleaved, frames - 1, channels);
  }

  // Hands on the partial chunk (the end of an utterance).
  template <typename Sink>
  void Flush(Sink&& sink) {
    if (filled_ > 0) {
      sink(chunk_.data(), filled_);
      filled_ = 0;
    }
  }

  void Reset() {
    filled_ = 0;
    source_sample_rate_ = 0;
    phase_ = 0;
    previous_ = 0;
  }

 private:
  static float Mono(const float* interleaved, size_t frame, int channels) {
    const float* at = interleaved + frame * channels;
    if (channels == 1) return at[0];
    float sum = 0;
    for (int c = 0; c < channels; ++c) sum += at[c];
    return sum / channels;
  }

  template <typename Sink>
  void Emit(float value, Sink& sink) {
    value = value > 1.0f ? 1.0f : value < -1.0f ? -1.0f : value;
    chunk_[filled_++] = static_cast<int16_t>(std::lrint(value * 32767.0f));
    if (filled_ == chunk_.size()) {
      sink(chunk_.data(), filled_);
      filled_ = 0;
    }
  }

  const int session_sample_rate_;
  std::vector<int16_t> chunk_;
  size_t filled_ = 0;
  int source_sample_rate_ = 0;
  double phase_ = 0;
  float previous_ = 0;
};

}  // namespace avatar_backend
