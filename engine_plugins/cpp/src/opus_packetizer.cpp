// opus_packetizer.cpp: the session's Opus encoder (libopus), the packet count and the voice sample count.
#include "opus_packetizer.h"

#include <opus/opus.h>

#include <stdexcept>

namespace avb {

namespace {
constexpr int kMaxPacketBytes = 1500;  // far above what 20 ms of voice at 64 kb/s needs
}

OpusPacketizer::OpusPacketizer(uint32_t sample_rate)
    : sample_rate_(sample_rate),
      samples_per_packet_(sample_rate * kPacketMs / 1000),
      last_packet_samples_(samples_per_packet_) {
  int error = OPUS_OK;
  encoder_ = opus_encoder_create(static_cast<opus_int32>(sample_rate), 1, OPUS_APPLICATION_VOIP, &error);
  if (error != OPUS_OK || encoder_ == nullptr) {
    throw std::runtime_error(std::string("opus_encoder_create: ") + opus_strerror(error));
  }
  opus_encoder_ctl(encoder_, OPUS_SET_BITRATE(64000));
  opus_int32 lookahead = 0;
  opus_encoder_ctl(encoder_, OPUS_GET_LOOKAHEAD(&lookahead));
  lookahead_ = lookahead;
}

OpusPacketizer::~OpusPacketizer() { opus_encoder_destroy(encoder_); }

OpusPacket OpusPacketizer::encode_one(const int16_t* packet_samples) {
  unsigned char buffer[kMaxPacketBytes];
  const opus_int32 size =
      opus_encode(encoder_, packet_samples, static_cast<int>(samples_per_packet_), buffer, kMaxPacketBytes);
  if (size < 0) throw std::runtime_error(std::string("opus_encode: ") + opus_strerror(size));
  encoded_since_flush_ = true;
  return number_packet(std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(size)),
                       samples_per_packet_);
}

OpusPacket OpusPacketizer::number(std::string payload) {
  const int samples = opus_packet_get_nb_samples(reinterpret_cast<const unsigned char*>(payload.data()),
                                                 static_cast<opus_int32>(payload.size()),
                                                 static_cast<opus_int32>(sample_rate_));
  return number_packet(std::move(payload), samples > 0 ? static_cast<uint32_t>(samples) : last_packet_samples_);
}

OpusPacket OpusPacketizer::number_packet(std::string payload, uint32_t samples) {
  OpusPacket packet{next_sequence_++, std::move(payload), restart_pending_, samples};
  restart_pending_ = false;
  last_packet_samples_ = samples;
  samples_in_packets_ += samples;
  return packet;
}

std::vector<OpusPacket> OpusPacketizer::push(const int16_t* samples, size_t count) {
  std::vector<OpusPacket> packets;
  remainder_.insert(remainder_.end(), samples, samples + count);
  size_t offset = 0;
  while (remainder_.size() - offset >= samples_per_packet_) {
    packets.push_back(encode_one(remainder_.data() + offset));
    offset += samples_per_packet_;
  }
  remainder_.erase(remainder_.begin(), remainder_.begin() + static_cast<std::ptrdiff_t>(offset));
  return packets;
}

std::vector<OpusPacket> OpusPacketizer::end_utterance() {
  std::vector<OpusPacket> packets;
  if (!encoded_since_flush_ && remainder_.empty()) return packets;  // nothing was said: nothing to flush
  const size_t needed = remainder_.size() + static_cast<size_t>(lookahead_);
  const size_t padded = (needed + samples_per_packet_ - 1) / samples_per_packet_ * samples_per_packet_;
  std::vector<int16_t> tail(padded, 0);
  std::copy(remainder_.begin(), remainder_.end(), tail.begin());
  remainder_.clear();
  for (size_t offset = 0; offset < padded; offset += samples_per_packet_) {
    packets.push_back(encode_one(tail.data() + offset));
  }
  encoded_since_flush_ = false;
  return packets;
}

void OpusPacketizer::restart_stream() {
  opus_encoder_ctl(encoder_, OPUS_RESET_STATE);
  restart_pending_ = true;
  encoded_since_flush_ = false;
}

}  // namespace avb
