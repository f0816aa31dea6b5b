// Tests of the Unreal plugin's engine-independent code (Source/AvatarBackend/Private/Portable), compiled with
// g++ by test_unreal_plugin_portable.py. Prints "PASS name" / "FAIL name: why"; exits 1 when any failed.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "AvatarEchoPlayback.h"
#include "AvatarVoiceChunker.h"
#include "AvatarVoiceSamples.h"

using avatar_backend::EchoPlayback;
using avatar_backend::HeardUntil;
using avatar_backend::VoiceChunker;
using avatar_backend::VoiceSampleFromBlueprint;
using avatar_backend::VoiceSamplesForBlueprint;

namespace {

struct Failure {
  std::string message;
};

template <typename A, typename B>
void Equal(const A& expected, const B& actual, const std::string& what) {
  if (!(expected == actual)) {
    std::ostringstream message;
    message << what << ": expected " << expected << ", got " << actual;
    throw Failure{message.str()};
  }
}

void Near(double expected, double actual, double tolerance, const std::string& what) {
  if (std::fabs(expected - actual) > tolerance) {
    std::ostringstream message;
    message << what << ": expected " << expected << " +- " << tolerance << ", got " << actual;
    throw Failure{message.str()};
  }
}

std::vector<int16_t> Ramp(size_t count, int first) {
  std::vector<int16_t> samples(count);
  for (size_t i = 0; i < count; ++i) samples[i] = static_cast<int16_t>(first + static_cast<int>(i));
  return samples;
}

struct Recorded {
  std::vector<size_t> chunk_sizes;
  std::vector<int16_t> samples;
  void operator()(const int16_t* chunk, size_t count) {
    chunk_sizes.push_back(count);
    samples.insert(samples.end(), chunk, chunk + count);
  }
};

void EchoPlaysSampleForSampleAndCountsThePosition() {
  EchoPlayback echo(48000);
  auto voice = Ramp(100, 1);
  echo.Enqueue(voice.data(), voice.size(), 4800);
  std::vector<float> output(2 * 60);
  Equal(size_t{60}, echo.Read(output.data(), 60, 2, 48000), "frames with voice");
  Equal(uint64_t{4860}, echo.PlayedUntil(), "played until");
  for (size_t i = 0; i < 60; ++i) {
    Near((1 + i) / 32768.0, output[2 * i], 1e-7, "left " + std::to_string(i));
    Equal(output[2 * i], output[2 * i + 1], "right = left");
  }
}

void EchoUnderrunIsSilentAndHoldsTheClock() {
  EchoPlayback echo(16000);
  auto voice = Ramp(10, 100);
  echo.Enqueue(voice.data(), voice.size(), 0);
  std::vector<float> output(32, 0.5f);
  Equal(size_t{10}, echo.Read(output.data(), 32, 1, 16000), "frames with voice");
  for (size_t i = 10; i < 32; ++i) Equal(0.0f, output[i], "silence");
  Equal(uint64_t{10}, echo.PlayedUntil(), "the clock waits for the voice");
}

void EchoResamplesToTheOutputRate() {
  EchoPlayback echo(16000);
  const int16_t voice[] = {0, 300, 600, 900, 1200};
  echo.Enqueue(voice, 5, 0);
  std::vector<float> output(9);
  echo.Read(output.data(), 9, 1, 48000);
  for (size_t i = 0; i < 9; ++i) Near(i * 100 / 32768.0, output[i], 1e-6, "interpolated " + std::to_string(i));
  Equal(uint64_t{3}, echo.PlayedUntil(), "three session samples");
}

void EchoInterruptDiscardsFromTheReplacePoint() {
  EchoPlayback echo(48000);
  auto voice = Ramp(1000, 0);
  echo.Enqueue(voice.data(), voice.size(), 0);
  std::vector<float> output(100);
  echo.Read(output.data(), 100, 1, 48000);
  echo.DiscardFrom(400);
  Equal(size_t{300}, echo.BufferedSamples(), "100..400 kept");
  auto answer = Ramp(50, 5000);
  echo.Enqueue(answer.data(), answer.size(), 400);
  std::vector<float> rest(300);
  echo.Read(rest.data(), 300, 1, 48000);
  float next = 0;
  echo.Read(&next, 1, 1, 48000);
  Near(5000 / 32768.0, next, 1e-6, "the new voice follows the kept voice");
}

void EchoInterruptSilencesAtOnceAndTheAnswerContinuesTheClock() {
  EchoPlayback echo(48000);
  auto voice = Ramp(1000, 0);
  echo.Enqueue(voice.data(), voice.size(), 0);
  std::vector<float> output(100);
  echo.Read(output.data(), 100, 1, 48000);
  echo.DiscardFrom(echo.PlayedUntil());  // UAvatarNpcComponent::Interrupt
  Equal(size_t{0}, echo.Read(output.data(), 10, 1, 48000), "silent at once");
  Equal(uint64_t{100}, echo.PlayedUntil(), "the clock holds");
  auto answer = Ramp(50, 7000);
  echo.Enqueue(answer.data(), answer.size(), 120);
  Equal(uint64_t{120}, echo.PlayedUntil(), "moves on to the replace point");
  echo.Read(output.data(), 1, 1, 48000);
  Near(7000 / 32768.0, output[0], 1e-6, "the answer's voice");
}

void EchoSkipsPlayedVoiceAndFillsGaps() {
  EchoPlayback echo(48000);
  auto first = Ramp(100, 1);
  echo.Enqueue(first.data(), first.size(), 0);
  std::vector<float> output(80);
  echo.Read(output.data(), 80, 1, 48000);
  auto overlap = Ramp(40, 500);
  echo.Enqueue(overlap.data(), overlap.size(), 70);
  Equal(size_t{30}, echo.BufferedSamples(), "80..110");
  auto after_gap = Ramp(10, 900);
  echo.Enqueue(after_gap.data(), after_gap.size(), 120);
  Equal(size_t{50}, echo.BufferedSamples(), "80..130 with a silent gap");
  std::vector<float> rest(50);
  echo.Read(rest.data(), 50, 1, 48000);
  Near(510 / 32768.0, rest[0], 1e-6, "first unplayed sample");
  Equal(0.0f, rest[35], "gap");
  Near(900 / 32768.0, rest[40], 1e-6, "after the gap");
}

void EchoSkipAndHeardUntil() {
  EchoPlayback echo(48000);
  auto voice = Ramp(100, 0);
  echo.Enqueue(voice.data(), voice.size(), 1000);
  Equal(size_t{100}, echo.Skip(480), "skipped only what is buffered");
  Equal(uint64_t{1100}, echo.PlayedUntil(), "position");
  Equal(uint64_t{9040}, HeardUntil(10000, 0.02, 48000), "20 ms of output latency");
  Equal(uint64_t{0}, HeardUntil(500, 0.02, 48000), "never below zero");
}

void ChunkerCuts20MillisecondChunks() {
  VoiceChunker chunker(48000);
  Equal(size_t{960}, chunker.ChunkSamples(), "20 ms at 48 kHz");
  Recorded sink;
  std::vector<float> block(500);
  for (int i = 0; i < 5; ++i) chunker.Write(block.data(), block.size(), 1, 48000, sink);
  chunker.Flush(sink);
  Equal(size_t{3}, sink.chunk_sizes.size(), "chunks");
  Equal(size_t{580}, sink.chunk_sizes[2], "the flushed rest");
}

void ChunkerConvertsDownmixesAndClamps() {
  VoiceChunker chunker(16000);
  Recorded sink;
  const float stereo[] = {0.5f, 0.1f, -0.2f, 0.0f, 2.0f, 2.0f};
  chunker.Write(stereo, 3, 2, 16000, sink);
  chunker.Flush(sink);
  Equal(size_t{3}, sink.samples.size(), "frames");
  Equal(int16_t{9830}, sink.samples[0], "mean of 0.5 and 0.1");
  Equal(int16_t{-3277}, sink.samples[1], "mean of -0.2 and 0");
  Equal(int16_t{32767}, sink.samples[2], "clamped");
}

void ChunkerResamplesASine() {
  VoiceChunker chunker(48000);
  Recorded sink;
  std::vector<float> second(44100);
  for (size_t i = 0; i < second.size(); ++i) second[i] = static_cast<float>(0.5 * std::sin(2 * M_PI * 440 * i / 44100.0));
  for (size_t at = 0; at < second.size(); at += 1021)
    chunker.Write(second.data() + at, std::min<size_t>(1021, second.size() - at), 1, 44100, sink);
  chunker.Flush(sink);
  Near(48000, static_cast<double>(sink.samples.size()), 2, "one second in, one second out");
  for (size_t i = 0; i + 2 < sink.samples.size(); ++i)
    Near(0.5 * std::sin(2 * M_PI * 440 * i / 48000.0) * 32767, sink.samples[i], 40, "sample " + std::to_string(i));
}

void ChunkerOutputDoesNotDependOnBlockSizes() {
  std::vector<float> voice(3000);
  unsigned state = 7;
  for (float& sample : voice) {
    state = state * 1103515245u + 12345u;
    sample = static_cast<float>((state >> 8) % 2001) / 1000.0f - 1.0f;
  }
  VoiceChunker whole_chunker(16000), split_chunker(16000);
  Recorded whole, split;
  whole_chunker.Write(voice.data(), voice.size(), 1, 48000, whole);
  whole_chunker.Flush(whole);
  for (size_t at = 0, size = 1; at < voice.size(); at += size, size = size % 97 + 13)
    split_chunker.Write(voice.data() + at, std::min(size, voice.size() - at), 1, 48000, split);
  split_chunker.Flush(split);
  Equal(size_t{1000}, whole.samples.size(), "a third of the samples");
  Equal(true, whole.samples == split.samples, "whole or in pieces");
}

void VoiceSamplesFromBlueprintMustNameASample() {
  uint64_t sample = 7;
  Equal(true, VoiceSampleFromBlueprint(0, &sample), "the first sample");
  Equal(uint64_t{0}, sample, "0");
  Equal(true, VoiceSampleFromBlueprint(int64_t{1} << 40, &sample), "beyond 32 bits");
  Equal(uint64_t{1} << 40, sample, "2^40");
  Equal(false, VoiceSampleFromBlueprint(-1, &sample), "a negative position names no sample");
  Equal(uint64_t{1} << 40, sample, "left as it was");
}

void VoiceSamplesSentReachBlueprintWithoutTurningNegative() {
  Equal(int64_t{1920}, VoiceSamplesForBlueprint(1920), "as counted");
  Equal(INT64_MAX, VoiceSamplesForBlueprint(uint64_t{INT64_MAX}), "the largest int64");
  Equal(INT64_MAX, VoiceSamplesForBlueprint(UINT64_MAX), "saturated");
}

}  // namespace

int main() {
  const std::vector<std::pair<const char*, std::function<void()>>> tests = {
      {"EchoPlaysSampleForSampleAndCountsThePosition", EchoPlaysSampleForSampleAndCountsThePosition},
      {"EchoUnderrunIsSilentAndHoldsTheClock", EchoUnderrunIsSilentAndHoldsTheClock},
      {"EchoResamplesToTheOutputRate", EchoResamplesToTheOutputRate},
      {"EchoInterruptDiscardsFromTheReplacePoint", EchoInterruptDiscardsFromTheReplacePoint},
      {"EchoInterruptSilencesAtOnceAndTheAnswerContinuesTheClock", EchoInterruptSilencesAtOnceAndTheAnswerContinuesTheClock},
      {"EchoSkipsPlayedVoiceAndFillsGaps", EchoSkipsPlayedVoiceAndFillsGaps},
      {"EchoSkipAndHeardUntil", EchoSkipAndHeardUntil},
      {"ChunkerCuts20MillisecondChunks", ChunkerCuts20MillisecondChunks},
      {"ChunkerConvertsDownmixesAndClamps", ChunkerConvertsDownmixesAndClamps},
      {"ChunkerResamplesASine", ChunkerResamplesASine},
      {"ChunkerOutputDoesNotDependOnBlockSizes", ChunkerOutputDoesNotDependOnBlockSizes},
      {"VoiceSamplesFromBlueprintMustNameASample", VoiceSamplesFromBlueprintMustNameASample},
      {"VoiceSamplesSentReachBlueprintWithoutTurningNegative", VoiceSamplesSentReachBlueprintWithoutTurningNegative},
  };
  int failed = 0;
  for (const auto& test : tests) {
    try {
      test.second();
      std::printf("PASS %s\n", test.first);
    } catch (const Failure& failure) {
      ++failed;
      std::printf("FAIL %s: %s\n", test.first, failure.message.c_str());
    }
  }
  std::printf("%zu passed, %d failed\n", tests.size() - failed, failed);
  return failed == 0 ? 0 : 1;
}
