// core_unit_tests.cpp: the core's parts that need no server: the Opus packetizer, its sequence numbers and its
// count of voice samples, the frame queue (drop-oldest, A/V clock, interrupt replacement), the echoed audio's
// resampling onto the session clock, and the resume-token bookkeeping.
#include <gtest/gtest.h>
#include <opus/opus.h>

#include <cmath>
#include <vector>

#include "echo_audio.h"
#include "frame_queue.h"
#include "opus_packetizer.h"
#include "resume_token.h"

namespace avb {
namespace {

std::vector<int16_t> tone(size_t count, double hz, int rate) {
  std::vector<int16_t> samples(count);
  for (size_t i = 0; i < count; ++i) samples[i] = static_cast<int16_t>(8000 * std::sin(2 * M_PI * hz * i / rate));
  return samples;
}

// --- packetizer ----------------------------------------------------------------------------------------------

TEST(OpusPacketizer, CutsTwentyMillisecondPacketsAndNumbersThem) {
  OpusPacketizer packetizer(48000);
  EXPECT_EQ(packetizer.samples_per_packet(), 960u);
  auto voice = tone(2500, 440, 48000);
  auto first = packetizer.push(voice.data(), 1000);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].sequence_number, 0u);
  EXPECT_FALSE(first[0].restart_sequence);
  auto second = packetizer.push(voice.data() + 1000, 1500);
  ASSERT_EQ(second.size(), 1u);
  EXPECT_EQ(second[0].sequence_number, 1u);
  EXPECT_EQ(packetizer.held_samples(), 2500u - 1920u);
  for (const auto& packet : second) EXPECT_GT(packet.payload.size(), 0u);
}

TEST(OpusPacketizer, SixteenKilohertzPacketsAreTwentyMillisecondsToo) {
  OpusPacketizer packetizer(16000);
  EXPECT_EQ(packetizer.samples_per_packet(), 320u);
  auto voice = tone(640, 300, 16000);
  EXPECT_EQ(packetizer.push(voice.data(), voice.size()).size(), 2u);
}

TEST(OpusPacketizer, EndOfUtteranceFlushesTheLookaheadSoTheLastSampleGetsOut) {
  OpusPacketizer packetizer(48000);
  ASSERT_EQ(packetizer.lookahead_samples(), 312);  // what the server trims when opus_pre_skip is unset
  auto voice = tone(2500, 440, 48000);
  auto packets = packetizer.push(voice.data(), voice.size());
  auto tail = packetizer.end_utterance();
  // 580 held + 312 look-ahead = 892 samples: one more packet.
  ASSERT_EQ(tail.size(), 1u);
  EXPECT_EQ(tail[0].sequence_number, 2u);
  EXPECT_EQ(packetizer.held_samples(), 0u);
  packets.insert(packets.end(), tail.begin(), tail.end());

  int error = 0;
  OpusDecoder* decoder = opus_decoder_create(48000, 1, &error);
  ASSERT_EQ(error, OPUS_OK);
  std::vector<int16_t> decoded;
  for (const auto& packet : packets) {
    std::vector<int16_t> out(960);
    int n = opus_decode(decoder, reinterpret_cast<const unsigned char*>(packet.payload.data()),
                        static_cast<opus_int32>(packet.payload.size()), out.data(), 960, 0);
    ASSERT_EQ(n, 960);
    decoded.insert(decoded.end(), out.begin(), out.end());
  }
  opus_decoder_destroy(decoder);
  // Trimmed as the server does, the voice's last 100 samples are there, and silence follows them.
  decoded.erase(decoded.begin(), decoded.begin() + 312);
  ASSERT_GE(decoded.size(), 2500u);
  auto energy = [&](size_t from, size_t to) {
    double sum = 0;
    for (size_t i = from; i < to; ++i) sum += double(decoded[i]) * decoded[i];
    return std::sqrt(sum / double(to - from));
  };
  // Without the flush only 2 * 960 - 312 = 1608 samples would have come out.
  const double voice_end = energy(2400, 2500);
  EXPECT_GT(voice_end, 2000.0);
  EXPECT_LT(energy(2600, decoded.size()), voice_end / 4);  // codec ringing only
}

TEST(OpusPacketizer, NothingSaidNothingFlushed) {
  OpusPacketizer packetizer(48000);
  EXPECT_TRUE(packetizer.end_utterance().empty());
  EXPECT_EQ(packetizer.next_sequence_number(), 0u);
}

TEST(OpusPacketizer, RawPacketsShareTheCountAndARestartIsDeclaredOnce) {
  OpusPacketizer packetizer(48000);
  auto voice = tone(960, 440, 48000);
  EXPECT_EQ(packetizer.push(voice.data(), voice.size())[0].sequence_number, 0u);
  EXPECT_EQ(packetizer.number("raw").sequence_number, 1u);
  packetizer.restart_stream();
  auto after = packetizer.push(voice.data(), voice.size());
  ASSERT_EQ(after.size(), 1u);
  EXPECT_EQ(after[0].sequence_number, 2u);  // the count continues; the server is told it restarts here
  EXPECT_TRUE(after[0].restart_sequence);
  EXPECT_FALSE(packetizer.push(voice.data(), voice.size())[0].restart_sequence);
}

TEST(OpusPacketizer, InterruptDropsTheHeldRemainder) {
  OpusPacketizer packetizer(48000);
  auto voice = tone(1500, 440, 48000);
  packetizer.push(voice.data(), voice.size());
  EXPECT_EQ(packetizer.held_samples(), 540u);
  packetizer.drop_remainder();
  EXPECT_EQ(packetizer.held_samples(), 0u);
}

TEST(OpusPacketizer, CountsTheVoiceSamplesThatWentIntoPackets) {
  OpusPacketizer packetizer(48000);
  auto voice = tone(1000, 440, 48000);
  packetizer.push(voice.data(), voice.size());
  EXPECT_EQ(packetizer.samples_in_packets(), 960u);  // the 40 held samples wait for the next packet
  const auto tail = packetizer.end_utterance();      // 40 + 312 look-ahead: padded to one packet
  ASSERT_EQ(tail.size(), 1u);
  EXPECT_EQ(tail[0].samples, 960u);
  EXPECT_EQ(packetizer.samples_in_packets(), 1920u);
  EXPECT_TRUE(packetizer.end_utterance().empty());
  EXPECT_EQ(packetizer.samples_in_packets(), 1920u);

  packetizer.push(voice.data(), 500);
  packetizer.drop_remainder();  // an interrupt: never sent, never counted
  EXPECT_EQ(packetizer.samples_in_packets(), 1920u);
  packetizer.restart_stream();  // a reconnect: the session's count runs on
  packetizer.push(voice.data(), 960);
  EXPECT_EQ(packetizer.samples_in_packets(), 2880u);
}

TEST(OpusPacketizer, SixteenKilohertzCountsAtTheSessionRate) {
  OpusPacketizer packetizer(16000);
  auto voice = tone(1000, 300, 16000);
  packetizer.push(voice.data(), voice.size());
  EXPECT_EQ(packetizer.samples_in_packets(), 960u);  // three 320-sample packets, 40 held
  packetizer.end_utterance();                         // 40 + 104 look-ahead: one more packet
  EXPECT_EQ(packetizer.samples_in_packets(), 1280u);
}

TEST(OpusPacketizer, RawPacketsCountTheirOwnDuration) {
  int error = 0;
  OpusEncoder* encoder = opus_encoder_create(48000, 1, OPUS_APPLICATION_VOIP, &error);
  ASSERT_EQ(error, OPUS_OK);
  auto encode = [&](size_t samples) {
    auto voice = tone(samples, 440, 48000);
    unsigned char buffer[1500];
    const int size = opus_encode(encoder, voice.data(), static_cast<int>(samples), buffer, sizeof buffer);
    EXPECT_GT(size, 0);
    return std::string(reinterpret_cast<char*>(buffer), static_cast<size_t>(size));
  };
  OpusPacketizer packetizer(48000);
  EXPECT_EQ(packetizer.number(encode(480)).samples, 480u);    // 10 ms
  EXPECT_EQ(packetizer.number(encode(2880)).samples, 2880u);  // 60 ms
  EXPECT_EQ(packetizer.samples_in_packets(), 3360u);
  // A packet whose duration cannot be read counts as long as the one before, as the server conceals it.
  EXPECT_EQ(packetizer.number(std::string("\x03", 1)).samples, 2880u);
  EXPECT_EQ(packetizer.samples_in_packets(), 6240u);

  OpusPacketizer sixteen(16000);
  EXPECT_EQ(sixteen.number(encode(960)).samples, 320u);  // 20 ms at the session's rate
  opus_encoder_destroy(encoder);
}

// --- frame queue -------------------------------------------------------------------------------------------

EncodedFrame frame(uint64_t index, uint64_t pts) {
  EncodedFrame f;
  f.index = index;
  f.pts = pts;
  f.audio_start = pts;
  f.audio_end = pts + 2400;
  f.width = f.height = 2;
  f.data = "jpeg";
  return f;
}

TEST(FrameQueue, DropsTheOldestWhenFullAndCountsThem) {
  FrameQueue queue(3);
  for (uint64_t i = 0; i < 5; ++i) queue.push(frame(i, i * 2400));
  EXPECT_EQ(queue.size(), 3u);
  EXPECT_EQ(queue.dropped(), 2u);
  ASSERT_NE(queue.oldest(), nullptr);
  EXPECT_EQ(queue.oldest()->index, 2u);
  EXPECT_EQ(queue.take_oldest()->index, 2u);
  EXPECT_EQ(queue.take_oldest()->index, 3u);
  EXPECT_EQ(queue.take_oldest()->index, 4u);
  EXPECT_FALSE(queue.take_oldest().has_value());
}

TEST(FrameQueue, TheClockGivesTheNewestDueFrameAndDropsTheOnesItOvertakes) {
  FrameQueue queue(16);
  for (uint64_t i = 0; i < 6; ++i) queue.push(frame(i, 1000 + i * 2400));
  EXPECT_EQ(queue.due(999), nullptr);
  EXPECT_FALSE(queue.take_due(999).has_value());
  EXPECT_EQ(queue.dropped(), 0u);
  // Playback at 1000 + 2.5 frames: frame 2 is due, 0 and 1 are too late to show.
  auto due = queue.take_due(1000 + 2 * 2400 + 1200);
  ASSERT_TRUE(due.has_value());
  EXPECT_EQ(due->index, 2u);
  EXPECT_EQ(queue.dropped(), 2u);
  EXPECT_EQ(queue.size(), 3u);
  // Exactly at a pts: that frame.
  due = queue.take_due(1000 + 3 * 2400);
  ASSERT_TRUE(due.has_value());
  EXPECT_EQ(due->index, 3u);
  EXPECT_EQ(queue.dropped(), 2u);
  EXPECT_EQ(queue.oldest()->index, 4u);
}

TEST(FrameQueue, InterruptReplacesOnlyTheUnheardOldVideo) {
  FrameQueue queue(32);
  for (uint64_t i = 0; i < 10; ++i) queue.push(frame(i, i * 2400));
  // Ack: the new video starts at frame 10, pts 12000 (frame 5's place).
  EXPECT_EQ(queue.replace(10, 12000), 5u);
  EXPECT_EQ(queue.replaced(), 5u);
  EXPECT_EQ(queue.dropped(), 0u);  // replacement is not loss
  queue.push(frame(10, 12000));
  std::vector<uint64_t> indices;
  while (auto f = queue.take_oldest()) indices.push_back(f->index);
  EXPECT_EQ(indices, (std::vector<uint64_t>{0, 1, 2, 3, 4, 10}));
}

TEST(FrameQueue, FramesNotHeardAtAnInterruptAreHeldUntilItsAck) {
  FrameQueue queue(32);
  for (uint64_t i = 0; i < 6; ++i) queue.push(frame(i, i * 2400));
  EXPECT_EQ(queue.take_due(2400)->index, 1u);
  // Interrupted at playback 4800: frame 2 starts there, so its voice was not heard; the clock stops before it.
  queue.hold_from(4800);
  EXPECT_EQ(queue.due(4800), nullptr);
  EXPECT_EQ(queue.due(9000), nullptr);
  EXPECT_FALSE(queue.take_due(9000).has_value());
  EXPECT_EQ(queue.oldest(), nullptr);
  EXPECT_FALSE(queue.take_oldest().has_value());
  EXPECT_EQ(queue.dropped(), 1u);  // frame 0, overtaken before the interrupt; nothing held is dropped
  // The ack replaces frames 2-5 and ends the hold; the new video plays from the replace point.
  EXPECT_EQ(queue.replace(6, 4800), 4u);
  queue.push(frame(6, 4800));
  EXPECT_EQ(queue.take_due(4800)->index, 6u);
}

TEST(FrameQueue, AnInterruptBeforeAnythingWasHeardHoldsEveryFrameAndAnEndedStreamReleasesThem) {
  FrameQueue queue(32);
  for (uint64_t i = 0; i < 3; ++i) queue.push(frame(i, i * 2400));
  queue.hold_from(0);
  EXPECT_EQ(queue.due(0), nullptr);
  EXPECT_EQ(queue.due(4800), nullptr);
  EXPECT_EQ(queue.oldest(), nullptr);
  queue.release_hold();  // no ack will come
  EXPECT_EQ(queue.take_oldest()->index, 0u);
  EXPECT_EQ(queue.take_due(4800)->index, 2u);
}

TEST(FrameQueue, TheClockFollowsTheReplacementVideo) {
  FrameQueue queue(32);
  for (uint64_t i = 0; i < 4; ++i) queue.push(frame(i, i * 2400));
  queue.replace(4, 4800);
  queue.push(frame(4, 4800));
  auto due = queue.take_due(5000);
  ASSERT_TRUE(due.has_value());
  EXPECT_EQ(due->index, 4u);
}

// --- echoed audio ------------------------------------------------------------------------------------------

std::vector<int16_t> ramp(size_t count, int first, int step) {
  std::vector<int16_t> samples(count);
  for (size_t i = 0; i < count; ++i) samples[i] = static_cast<int16_t>(first + int(i) * step);
  return samples;
}

std::vector<int16_t> drain(EchoAudioBuffer& echo, uint64_t* start, size_t capacity = 100000) {
  std::vector<int16_t> out(capacity);
  size_t n = echo.poll(out.data(), out.size(), start);
  out.resize(n);
  return out;
}

TEST(EchoAudio, SixteenKilohertzBecomesFortyEightOnTheClockWithoutGaps) {
  EchoAudioBuffer echo(48000);
  // Two echoes back to back: 160 samples at 16 kHz from 0 and from 480, a ramp of 30 per input sample.
  auto first = ramp(160, 0, 30), second = ramp(160, 160 * 30, 30);
  ASSERT_TRUE(echo.push(0, 16000, first.data(), first.size()));
  ASSERT_TRUE(echo.push(480, 16000, second.data(), second.size()));
  uint64_t start = 99;
  auto out = drain(echo, &start);
  EXPECT_EQ(start, 0u);
  // Everything up to the last input sample (its slice waits for the next echo to interpolate towards).
  ASSERT_EQ(out.size(), 319u * 3);
  for (size_t t = 0; t < out.size(); ++t) ASSERT_EQ(out[t], int16_t(t * 10)) << "at " << t;
  // The third echo releases the held slice: still one run, continuing at 957.
  auto third = ramp(160, 320 * 30, 30);
  echo.push(960, 16000, third.data(), third.size());
  out = drain(echo, &start);
  EXPECT_EQ(start, 957u);
  EXPECT_EQ(out[0], int16_t(957 * 10));
}

TEST(EchoAudio, PollsInPiecesAndReportsEachStart) {
  EchoAudioBuffer echo(48000);
  auto pcm = ramp(100, 0, 3);
  echo.push(3000, 16000, pcm.data(), pcm.size());
  EXPECT_EQ(echo.buffered_samples(), 99u * 3);
  uint64_t start = 0;
  EXPECT_EQ(drain(echo, &start, 100).size(), 100u);
  EXPECT_EQ(start, 3000u);
  EXPECT_EQ(drain(echo, &start, 100).size(), 100u);
  EXPECT_EQ(start, 3100u);
}

TEST(EchoAudio, SessionsAtSixteenKilohertzPassThrough) {
  EchoAudioBuffer echo(16000);
  auto pcm = ramp(50, 7, 1);
  echo.push(100, 16000, pcm.data(), pcm.size());
  uint64_t start = 0;
  auto out = drain(echo, &start);
  EXPECT_EQ(start, 100u);
  EXPECT_EQ(out, pcm);
}

TEST(EchoAudio, InterruptDropsTheAudioFromTheReplacePointAndTheNewAudioFollowsIt) {
  EchoAudioBuffer echo(48000);
  auto pcm = ramp(1600, 0, 1);  // 0.1 s at 16 kHz = 4800 session samples
  echo.push(0, 16000, pcm.data(), pcm.size());
  echo.drop_from(2400);
  EXPECT_EQ(echo.buffered_samples(), 2400u);
  auto silence = std::vector<int16_t>(160, 0);
  echo.push(2400, 16000, silence.data(), silence.size());
  uint64_t start = 0;
  // One gapless run: the old voice up to the replace point, then the new audio.
  auto out = drain(echo, &start);
  EXPECT_EQ(start, 0u);
  ASSERT_EQ(out.size(), 2400u + 159u * 3);
  EXPECT_EQ(out[2397], int16_t(799));
  for (size_t t = 2400; t < out.size(); ++t) ASSERT_EQ(out[t], 0) << "at " << t;
  EXPECT_EQ(echo.buffered_samples(), 0u);
}

TEST(EchoAudio, TenMinutesOfGaplessEchoPolledAsPlayedHoldOnlyWhatIsUnplayed) {
  // The server sends 100 ms echoes back to back; the engine plays (polls) 100 ms in pieces as they come. The
  // run never empties (a slice always waits for the next echo), so it must release its played front itself.
  EchoAudioBuffer echo(48000);
  std::vector<int16_t> out(4800);
  uint64_t start = 0, expected_start = 0;
  for (int k = 0; k < 6000; ++k) {
    auto pcm = ramp(1600, k % 7, 1);
    ASSERT_TRUE(echo.push(uint64_t(k) * 4800, 16000, pcm.data(), pcm.size()));
    for (size_t piece : {1000u, 1000u, 2800u}) {
      const size_t n = echo.poll(out.data(), piece, &start);
      if (n == 0) continue;
      ASSERT_EQ(start, expected_start) << "gapless, on the clock";
      expected_start += n;
    }
  }
  EXPECT_GT(expected_start, 6000u * 4800 - 4800);
  EXPECT_LT(echo.held_samples(), 48000u) << "held " << echo.held_samples() << " samples after 10 minutes";
}

TEST(EchoAudio, AnEchoNobodyPollsKeepsOnlyItsLastThirtySeconds) {
  EchoAudioBuffer echo(48000);
  for (int k = 0; k < 6000; ++k) {  // ten minutes, never polled (a video-only NPC)
    auto pcm = ramp(1600, 0, 1);
    ASSERT_TRUE(echo.push(uint64_t(k) * 4800, 16000, pcm.data(), pcm.size()));
  }
  const uint64_t cap = uint64_t(EchoAudioBuffer::kMaxBufferedSeconds) * 48000;
  EXPECT_EQ(echo.buffered_samples(), cap);
  EXPECT_LT(echo.held_samples(), cap + 48000);
  uint64_t start = 0;
  std::vector<int16_t> out(10);
  ASSERT_EQ(echo.poll(out.data(), out.size(), &start), 10u);
  EXPECT_EQ(start, 6000u * 4800 - 3 - cap) << "the newest 30 s, up to the slice that waits for the next echo";
}

TEST(EchoAudio, RefusesRatesThatDoNotDivide) {
  EchoAudioBuffer echo(48000);
  int16_t one = 1;
  EXPECT_FALSE(echo.push(0, 44100, &one, 1));
  EXPECT_EQ(echo.buffered_samples(), 0u);
}

// --- resume tokens -----------------------------------------------------------------------------------------

TEST(ResumeTokenBook, AReopenSendsOnlyATokenTheServerSavedAndAnEmptyTokenNeverErasesOne) {
  ResumeTokenBook book;
  EXPECT_EQ(book.for_reopen(), "");
  book.on_accepted("accepted-1");
  // Cut before the server said what it saved: the memory has moved past accepted-1, which would be refused.
  EXPECT_EQ(book.for_reopen(), "");
  EXPECT_EQ(book.latest(), "accepted-1");
  book.on_trailer("");  // a stream cut before the server saved anything
  EXPECT_EQ(book.for_reopen(), "");
  EXPECT_EQ(book.latest(), "accepted-1");
  book.on_trailer("saved-2");  // a draining server's word: exactly where the memory stands
  EXPECT_EQ(book.for_reopen(), "saved-2");
  book.on_accepted("saved-2");  // the reopened stream generates again
  EXPECT_EQ(book.for_reopen(), "");
  book.on_ended("ended-3");
  EXPECT_EQ(book.for_reopen(), "ended-3");
  EXPECT_EQ(book.latest(), "ended-3");
}

}  // namespace
}  // namespace avb
