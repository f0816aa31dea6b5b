// jpeg_decoder.cpp: TurboJPEG decompression of the frames.
#include "jpeg_decoder.h"

#include <turbojpeg.h>

#include <cstring>

namespace avb {

FrameDecoder::FrameDecoder() : handle_(tjInitDecompress()) {}
FrameDecoder::~FrameDecoder() {
  if (handle_ != nullptr) tjDestroy(static_cast<tjhandle>(handle_));
}

bool FrameDecoder::decode(const EncodedFrame& frame, PixelFormat format, uint8_t* pixels, size_t capacity,
                          std::string* error) {
  const size_t bpp = bytes_per_pixel(format);
  const size_t needed = static_cast<size_t>(frame.width) * frame.height * bpp;
  if (capacity < needed) {
    *error = "buffer too small";
    return false;
  }
  if (frame.codec == FrameCodec::kRawRgb) {
    if (frame.data.size() != static_cast<size_t>(frame.width) * frame.height * 3) {
      *error = "raw RGB frame of the wrong size";
      return false;
    }
    const auto* rgb = reinterpret_cast<const uint8_t*>(frame.data.data());
    if (format == PixelFormat::kRgb) {
      std::memcpy(pixels, rgb, needed);
    } else {
      for (size_t i = 0, n = static_cast<size_t>(frame.width) * frame.height; i < n; ++i) {
        pixels[i * 4 + 0] = rgb[i * 3 + 0];
        pixels[i * 4 + 1] = rgb[i * 3 + 1];
        pixels[i * 4 + 2] = rgb[i * 3 + 2];
        pixels[i * 4 + 3] = 255;
      }
    }
    return true;
  }
  auto handle = static_cast<tjhandle>(handle_);
  if (handle == nullptr) {
    *error = "TurboJPEG could not be initialised";
    return false;
  }
  int width = 0, height = 0, subsampling = 0, colorspace = 0;
  auto* jpeg = reinterpret_cast<unsigned char*>(const_cast<char*>(frame.data.data()));
  const auto size = static_cast<unsigned long>(frame.data.size());
  if (tjDecompressHeader3(handle, jpeg, size, &width, &height, &subsampling, &colorspace) != 0) {
    *error = std::string("JPEG header: ") + tjGetErrorStr2(handle);
    return false;
  }
  if (static_cast<uint32_t>(width) != frame.width || static_cast<uint32_t>(height) != frame.height) {
    *error = "JPEG size differs from the frame's";
    return false;
  }
  const int pixel_format = format == PixelFormat::kRgba ? TJPF_RGBA : TJPF_RGB;
  if (tjDecompress2(handle, jpeg, size, pixels, width, 0, height, pixel_format, TJFLAG_ACCURATEDCT) != 0) {
    *error = std::string("JPEG decode: ") + tjGetErrorStr2(handle);
    return false;
  }
  return true;
}

}  // namespace avb
