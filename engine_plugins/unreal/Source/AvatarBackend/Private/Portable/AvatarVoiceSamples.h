// Voice positions across Blueprint, which has no uint64: the core counts the voice sent in uint64 samples
// (avb_session_voice_samples_sent, at_voice_sample) and the component's Blueprint functions take int64.
// Standard C++ only, tested with g++ in CI.
#pragma once

#include <cstdint>
#include <limits>

namespace avatar_backend {

// A voice position from Blueprint into the core's count: false for a negative one, which names no sample.
inline bool VoiceSampleFromBlueprint(int64_t position, uint64_t* out) {
  if (position < 0) return false;
  *out = static_cast<uint64_t>(position);
  return true;
}

// The core's count for Blueprint: saturates instead of turning negative (2^63 samples are millions of years of
// voice, so it never does in practice).
inline int64_t VoiceSamplesForBlueprint(uint64_t count) {
  const uint64_t largest = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  return static_cast<int64_t>(count < largest ? count : largest);
}

}  // namespace avatar_backend
