// opus_packetizer.h: cuts the NPC's voice (mono int16 PCM) into numbered 20 ms Opus packets with one encoder per
// session, flushes the encoder's look-ahead with silence at the end of an utterance, and counts the voice
// samples that went into packets (the count timed control events refer to).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

struct OpusEncoder;

namespace avb {

struct OpusPacket {
  uint32_t sequence_number;
  std::string payload;
  bool restart_sequence;
  uint32_t samples;  // its duration at the session's rate
};

class OpusPacketizer {
 public:
  static constexpr int kPacketMs = 20;

  // sample_rate: 48000 or 16000. Throws std::runtime_error when libopus refuses it.
  explicit OpusPacketizer(uint32_t sample_rate);
  ~OpusPacketizer();
  OpusPacketizer(const OpusPacketizer&) = delete;
  OpusPacketizer& operator=(const OpusPacketizer&) = delete;

  // Encodes every whole 20 ms packet of held + new samples; a remainder waits for the next call.
  std::vector<OpusPacket> push(const int16_t* samples, size_t count);
  // The held remainder padded with silence long enough that the encoder's look-ahead lets the last real
  // sample out (the server trims the look-ahead once, at the stream's start).
  std::vector<OpusPacket> end_utterance();
  // Numbers an already encoded packet in the same count as the encoded ones. Its duration comes from its
  // header; one libopus cannot read lasts as long as the previous packet, as the server conceals its slot.
  OpusPacket number(std::string payload);
  // Drops the held remainder (an interrupt: that voice will never be heard).
  void drop_remainder() { remainder_.clear(); }
  // A new stream (reconnect): a fresh encoder state, so the server's pre-skip trim matches again, and the
  // next packet declares restart_sequence.
  void restart_stream();

  uint32_t samples_per_packet() const { return samples_per_packet_; }
  int32_t lookahead_samples() const { return lookahead_; }
  uint32_t next_sequence_number() const { return next_sequence_; }
  size_t held_samples() const { return remainder_.size(); }
  // Voice samples in every packet made or numbered so far, silence padding included, across restarts; a held
  // remainder counts once it goes into a packet.
  uint64_t samples_in_packets() const { return samples_in_packets_; }

 private:
  OpusPacket encode_one(const int16_t* packet_samples);
  OpusPacket number_packet(std::string payload, uint32_t samples);

  OpusEncoder* encoder_ = nullptr;
  uint32_t sample_rate_;
  uint32_t samples_per_packet_;
  uint32_t last_packet_samples_;
  uint64_t samples_in_packets_ = 0;
  int32_t lookahead_ = 0;
  uint32_t next_sequence_ = 0;  // wraps at 2^32 as the contract says
  bool restart_pending_ = false;
  bool encoded_since_flush_ = false;
  std::vector<int16_t> remainder_;
};

}  // namespace avb
