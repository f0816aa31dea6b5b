// jpeg_decoder.h: frame pixels into the caller's buffer (TurboJPEG for JPEG frames; raw RGB frames copied).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "frame_queue.h"

namespace avb {

enum class PixelFormat { kRgba, kRgb };

inline size_t bytes_per_pixel(PixelFormat format) { return format == PixelFormat::kRgba ? 4 : 3; }

class FrameDecoder {
 public:
  FrameDecoder();
  ~FrameDecoder();
  FrameDecoder(const FrameDecoder&) = delete;
  FrameDecoder& operator=(const FrameDecoder&) = delete;

  // Decodes into pixels (width * height * bytes_per_pixel, rows top to bottom, no padding); false with
  // *error set when the data does not decode to the frame's size.
  bool decode(const EncodedFrame& frame, PixelFormat format, uint8_t* pixels, size_t capacity, std::string* error);

 private:
  void* handle_;  // tjhandle
};

}  // namespace avb
