// avatar_say: streams a WAV file as an NPC's voice through the C ABI at real-time pace, plays the echoed audio
// on a simulated audio clock, shows the frames that clock makes due (written as PPM files) and prints a summary
// (one JSON line): frames, first frame latency, A/V offset, the interrupt acknowledgement, reconnects.
//
//   avatar_say --target HOST:PORT --wav speech.wav --out DIR [--npc ID] [--character ID] [--size N] [--fps N]
//              [--interrupt-after-s S] [--reconnect] [--wait-reconnect] [--timeout-s S]
//
// The WAV: 16-bit PCM, mono or stereo (mixed to mono), any rate (resampled linearly to 48 kHz).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "avatar_backend/avatar_client.h"

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint32_t kRate = 48000;

struct Options {
  std::string target, wav, out, npc = "avatar-say", character = "default";
  uint32_t size = 0, fps = 0;
  double interrupt_after_s = -1;
  bool reconnect = false, wait_reconnect = false;
  double timeout_s = 180;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "avatar_say: %s\nusage: avatar_say --target HOST:PORT --wav FILE --out DIR [--npc ID] "
               "[--character ID] [--size N] [--fps N] [--interrupt-after-s S] [--reconnect] [--wait-reconnect] "
               "[--timeout-s S]\n",
               why);
  std::exit(64);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value for " + arg).c_str());
      return argv[++i];
    };
    if (arg == "--target") o.target = value();
    else if (arg == "--wav") o.wav = value();
    else if (arg == "--out") o.out = value();
    else if (arg == "--npc") o.npc = value();
    else if (arg == "--character") o.character = value();
    else if (arg == "--size") o.size = static_cast<uint32_t>(std::stoul(value()));
    else if (arg == "--fps") o.fps = static_cast<uint32_t>(std::stoul(value()));
    else if (arg == "--interrupt-after-s") o.interrupt_after_s = std::stod(value());
    else if (arg == "--reconnect") o.reconnect = true;
    else if (arg == "--wait-reconnect") o.wait_reconnect = o.reconnect = true;
    else if (arg == "--timeout-s") o.timeout_s = std::stod(value());
    else usage(("unknown argument " + arg).c_str());
  }
  if (o.target.empty() || o.wav.empty() || o.out.empty()) usage("--target, --wav and --out are required");
  return o;
}

uint32_t le32(const unsigned char* p) { return p[0] | p[1] << 8 | p[2] << 16 | uint32_t(p[3]) << 24; }
uint16_t le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | p[1] << 8); }

// 16-bit PCM WAV as mono samples at 48 kHz.
std::vector<int16_t> read_wav(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (bytes.size() < 12 || std::memcmp(bytes.data(), "RIFF", 4) != 0 || std::memcmp(&bytes[8], "WAVE", 4) != 0) {
    usage("the WAV file is not RIFF/WAVE");
  }
  uint16_t format = 0, channels = 0, bits = 0;
  uint32_t rate = 0;
  std::vector<int16_t> mono;
  for (size_t at = 12; at + 8 <= bytes.size();) {
    const uint32_t size = le32(&bytes[at + 4]);
    const unsigned char* body = &bytes[at + 8];
    const size_t available = std::min<size_t>(size, bytes.size() - at - 8);  // espeak-ng streams: size may lie
    if (std::memcmp(&bytes[at], "fmt ", 4) == 0 && size >= 16) {
      format = le16(body);
      channels = le16(body + 2);
      rate = le32(body + 4);
      bits = le16(body + 14);
    } else if (std::memcmp(&bytes[at], "data", 4) == 0) {
      if (format != 1 || bits != 16 || (channels != 1 && channels != 2)) usage("the WAV must be 16-bit PCM, mono or stereo");
      for (size_t i = 0; i + 2 * channels <= available; i += 2 * channels) {
        int sum = 0;
        for (int c = 0; c < channels; ++c) sum += static_cast<int16_t>(le16(body + i + 2 * c));
        mono.push_back(static_cast<int16_t>(sum / channels));
      }
      break;
    }
    at += 8 + size + (size & 1);
  }
  if (mono.empty() || rate == 0) usage("the WAV has no samples");
  if (rate == kRate) return mono;
  std::vector<int16_t> resampled(static_cast<size_t>(double(mono.size()) * kRate / rate));
  for (size_t i = 0; i < resampled.size(); ++i) {
    const double position = double(i) * rate / kRate;
    const size_t left = static_cast<size_t>(position);
    const size_t right = std::min(left + 1, mono.size() - 1);
    const double frac = position - double(left);
    resampled[i] = static_cast<int16_t>(std::lround(mono[left] * (1 - frac) + mono[right] * frac));
  }
  return resampled;
}

void write_wav(const std::string& path, const std::vector<int16_t>& samples) {
  std::ofstream out(path, std::ios::binary);
  auto u32 = [&](uint32_t v) { out.put(char(v)).put(char(v >> 8)).put(char(v >> 16)).put(char(v >> 24)); };
  auto u16 = [&](uint16_t v) { out.put(char(v)).put(char(v >> 8)); };
  const uint32_t data = static_cast<uint32_t>(samples.size() * 2);
  out.write("RIFF", 4); u32(36 + data); out.write("WAVEfmt ", 8); u32(16); u16(1); u16(1); u32(kRate);
  u32(kRate * 2); u16(2); u16(16); out.write("data", 4); u32(data);
  for (int16_t s : samples) u16(static_cast<uint16_t>(s));
}

std::string json_escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) out += c;
  }
  return out;
}

std::string session_error(avb_session* session) {
  char message[512];
  avb_session_last_error(session, message, sizeof message);
  return message;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  const std::vector<int16_t> voice = read_wav(options.wav);
  std::string mkdir = "mkdir -p '" + options.out + "'";
  if (std::system(mkdir.c_str()) != 0) usage("cannot create --out");

  avb_client_config client_config{};
  client_config.struct_size = sizeof client_config;
  client_config.target = options.target.c_str();
  avb_client* client = nullptr;
  if (avb_client_create(&client_config, &client) != AVB_OK) usage("bad --target");

  avb_session_config config{};
  config.struct_size = sizeof config;
  config.npc_id = options.npc.c_str();
  config.character_id = options.character.c_str();
  config.width = config.height = options.size;
  config.fps = options.fps;
  config.sample_rate = kRate;
  config.reconnect = options.reconnect ? 1 : 0;
  config.max_buffered_frames = 256;
  avb_session* session = nullptr;
  if (avb_session_open(client, &config, &session) != AVB_OK) usage("avb_session_open refused the arguments");

  const auto opened = Clock::now();
  const auto deadline = opened + std::chrono::duration<double>(options.timeout_s);
  auto since = [](Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); };

  // The simulated audio device: it plays the echoed audio at real-time pace from the first echo on, and
  // waits (underrun) when the echo has not arrived yet.
  std::vector<int16_t> echo;           // played track, session clock from echo_origin
  uint64_t echo_origin = 0;
  uint64_t echo_discontinuities = 0;
  bool echo_replaced = false;  // the track was cut at an interrupt's replace point
  bool echo_started = false;
  double playhead = 0;                 // samples, session clock
  auto last_tick = Clock::now();

  bool live = false, speaking_started = false, utterance_ended = false, interrupted = false, ack_received = false;
  bool ended = false, utterance_complete = false, reconnecting = false, live_after_reconnect = false;
  uint64_t timeline_end = 0, ack_values[4] = {0, 0, 0, 0}, live_start_frame_index = 0;
  Clock::time_point speak_start;
  size_t pushed = 0;
  int32_t ended_code = -1;
  std::string ended_token, ended_text;
  uint64_t frames_shown = 0, frames_after_ack = 0, frames_after_reconnect = 0, last_pts = 0, last_index = 0;
  bool pts_increasing = true, first_shown = false;
  double offset_sum_ms = 0, offset_max_ms = 0;
  std::ofstream tsv(options.out + "/frames.tsv");
  tsv << "index\tpts\tspeaking\tplayhead\tinterrupt_phase\n";
  std::vector<uint8_t> pixels;
  int exit_code = 0;

  auto finished = [&] {
    if (options.interrupt_after_s >= 0 && !(ack_received && frames_after_ack >= 5)) return false;
    if (options.interrupt_after_s < 0 && !(utterance_complete && playhead >= double(timeline_end))) return false;
    if (options.wait_reconnect && !(live_after_reconnect && frames_after_reconnect >= 5)) return false;
    return true;
  };

  while (!ended) {
    if (Clock::now() > deadline) {
      std::fprintf(stderr, "avatar_say: timed out after %.0f s\n", options.timeout_s);
      exit_code = 2;
      break;
    }
    // Events.
    avb_event event;
    while (avb_session_poll_event(session, &event) == AVB_OK) {
      if (event.type == AVB_EVENT_STATE) {
        static const char* const names[] = {"?", "opening", "live", "reconnecting", "closed"};
        std::printf("state %s", names[event.code >= 1 && event.code <= 4 ? event.code : 0]);
        if (event.code == AVB_STATE_RECONNECTING) reconnecting = true;
        if (event.code == AVB_STATE_LIVE) {
          live = true;
          live_after_reconnect = live_after_reconnect || reconnecting;
          live_start_frame_index = event.values[0];
          std::printf(" start_frame_index=%llu size=%llux%llu fps=%llu", (unsigned long long)event.values[0],
                      (unsigned long long)event.values[1], (unsigned long long)event.values[2],
                      (unsigned long long)event.values[3]);
        }
        std::printf(" t=%.2f\n", since(opened));
      } else if (event.type == AVB_EVENT_SERVER) {
        std::printf("server event %d %s %s\n", event.code, event.text, event.detail);
        if (event.code == 6 && !interrupted) {  // EVENT_CODE_UTTERANCE_COMPLETE
          utterance_complete = true;
          timeline_end = event.values[0];
        }
      } else if (event.type == AVB_EVENT_INTERRUPT_ACK) {
        ack_received = true;
        std::copy(event.values, event.values + 4, ack_values);
        std::printf("interrupt ack next_frame_index=%llu replace_from_pts=%llu dropped=%llu unheard=%llu\n",
                    (unsigned long long)event.values[0], (unsigned long long)event.values[1],
                    (unsigned long long)event.values[2], (unsigned long long)event.values[3]);
        if (!echo_replaced && echo_started && event.values[1] >= echo_origin &&
            event.values[1] - echo_origin < echo.size()) {
          echo.resize(event.values[1] - echo_origin);  // never played: the new video replaces it
        }
      } else if (event.type == AVB_EVENT_ENDED) {
        ended = true;
        ended_code = event.code;
        ended_token = event.detail;
        ended_text = event.text;
      }
    }
    std::fflush(stdout);
    if (ended) break;

    // Voice at real-time pace, from the moment the session is live.
    if (live && !speaking_started) {
      speaking_started = true;
      speak_start = Clock::now();
    }
    // The player interrupts: whatever is still being said or shown is cut at what was heard.
    if (speaking_started && options.interrupt_after_s >= 0 && !interrupted &&
        since(speak_start) >= options.interrupt_after_s) {
      avb_session_playback_progress(session, static_cast<uint64_t>(playhead));
      avb_session_interrupt(session);
      if (!utterance_ended) avb_session_end_utterance(session);
      interrupted = utterance_ended = true;
      std::printf("interrupt sent played_until=%llu t=%.2f\n", (unsigned long long)playhead, since(opened));
    }
    if (speaking_started && !utterance_ended) {
      const size_t due = std::min(voice.size(), static_cast<size_t>(since(speak_start) * kRate));
      if (due > pushed) {
        const size_t whole = (due - pushed) / 960 * 960;  // 20 ms at a time, as an audio callback would
        if (whole > 0) {
          avb_session_push_pcm(session, voice.data() + pushed, whole);
          pushed += whole;
        }
        if (pushed + 960 > voice.size() && due == voice.size()) {
          avb_session_push_pcm(session, voice.data() + pushed, voice.size() - pushed);
          pushed = voice.size();
          avb_session_end_utterance(session);
          utterance_ended = true;
        }
      }
    }

    // Echoed audio into the device's track.
    int16_t chunk[4800];
    size_t count = 0;
    uint64_t start = 0;
    while (avb_session_poll_audio(session, chunk, 4800, &count, &start) == AVB_OK && count > 0) {
      if (!echo_started) {
        echo_started = true;
        echo_origin = start;
        playhead = double(start);
        last_tick = Clock::now();
      }
      if (start < echo_origin) continue;
      const size_t at = start - echo_origin;
      // The echo must continue exactly where the track ends (after an ack: at the replace point); a gap or
      // an overlap would be a defect, counted and shown as silence or overwritten audio in echo.wav.
      if (at < echo.size() && interrupted && !ack_received && !echo_replaced) {
        echo.resize(at);  // the ack's new audio, polled before the ack event itself: it replaces from here
        echo_replaced = true;
      }
      if (at != echo.size()) ++echo_discontinuities;
      if (at > echo.size()) echo.resize(at, 0);
      echo.resize(std::max(echo.size(), at + count));
      std::copy(chunk, chunk + count, echo.begin() + static_cast<std::ptrdiff_t>(at));
    }
    const auto now = Clock::now();
    // Between the interrupt and its ack the NPC's audio stops where the player interrupted it: nothing after
    // that point is played or shown until the ack says what replaces it.
    if (echo_started && !(interrupted && !ack_received)) {
      playhead = std::min(playhead + std::chrono::duration<double>(now - last_tick).count() * kRate,
                          double(echo_origin + echo.size()));
      avb_session_playback_progress(session, static_cast<uint64_t>(playhead));
    }
    last_tick = now;

    // Frames the audio clock makes due.
    avb_frame_info info{};
    for (;;) {
      avb_result result = avb_session_poll_due_frame(session, static_cast<uint64_t>(playhead), AVB_PIXELS_RGB,
                                                     pixels.data(), pixels.size(), &info);
      if (result == AVB_BUFFER_TOO_SMALL || (result == AVB_BAD_ARGUMENT && pixels.empty())) {
        pixels.resize(1024 * 1024 * 3);  // grows once; the frame's size is known after the first poll
        continue;
      }
      if (result != AVB_OK) {
        if (result == AVB_BAD_ARGUMENT) std::fprintf(stderr, "frame: %s\n", session_error(session).c_str());
        break;
      }
      char name[64];
      std::snprintf(name, sizeof name, "/frame_%08llu.ppm", (unsigned long long)info.index);
      std::ofstream ppm(options.out + name, std::ios::binary);
      ppm << "P6\n" << info.width << " " << info.height << "\n255\n";
      ppm.write(reinterpret_cast<const char*>(pixels.data()), std::streamsize(info.width) * info.height * 3);
      // interrupt_phase: 0 before the interrupt was sent, 1 while its ack is awaited, 2 after the ack.
      tsv << info.index << "\t" << info.pts << "\t" << info.speaking << "\t" << uint64_t(playhead) << "\t"
          << (ack_received ? 2 : interrupted ? 1 : 0) << "\n";
      if (first_shown && (info.pts <= last_pts || info.index <= last_index)) pts_increasing = false;
      first_shown = true;
      last_pts = info.pts;
      last_index = info.index;
      ++frames_shown;
      const double offset_ms = (playhead - double(info.pts)) * 1000.0 / kRate;
      offset_sum_ms += offset_ms;
      offset_max_ms = std::max(offset_max_ms, offset_ms);
      if (ack_received && info.index >= ack_values[0]) ++frames_after_ack;
      if (live_after_reconnect && info.index >= live_start_frame_index) ++frames_after_reconnect;
    }

    if (finished() && !ended) {
      avb_session_close(session);
      // Keep polling events until ENDED, with frames still counted above.
      const auto close_deadline = Clock::now() + std::chrono::seconds(60);
      while (!ended && Clock::now() < close_deadline) {
        while (avb_session_poll_event(session, &event) == AVB_OK) {
          if (event.type == AVB_EVENT_ENDED) {
            ended = true;
            ended_code = event.code;
            ended_token = event.detail;
            ended_text = event.text;
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      if (!ended) exit_code = 3;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

  avb_stats stats{};
  stats.struct_size = sizeof stats;
  avb_session_get_stats(session, &stats);
  write_wav(options.out + "/echo.wav", echo);
  if (ended && ended_code != 0 && exit_code == 0) exit_code = 1;
  std::ostringstream summary;
  summary << "{\"frames_shown\":" << frames_shown << ",\"frames_received\":" << stats.frames_received
          << ",\"frames_dropped\":" << stats.frames_dropped << ",\"first_frame_latency_ms\":"
          << stats.first_frame_latency_ms << ",\"av_offset_ms_mean\":"
          << (frames_shown ? offset_sum_ms / double(frames_shown) : 0.0) << ",\"av_offset_ms_max\":" << offset_max_ms
          << ",\"pts_increasing\":" << (pts_increasing ? "true" : "false")
          << ",\"echo_samples\":" << echo.size() << ",\"echo_discontinuities\":" << echo_discontinuities << ",\"reconnects\":" << stats.reconnects
          << ",\"frames_after_reconnect\":" << frames_after_reconnect << ",\"interrupt_ack\":";
  if (ack_received) {
    summary << "{\"next_frame_index\":" << ack_values[0] << ",\"replace_from_pts\":" << ack_values[1]
            << ",\"dropped_samples\":" << ack_values[2] << ",\"unheard_samples\":" << ack_values[3]
            << ",\"frames_after\":" << frames_after_ack << "}";
  } else {
    summary << "null";
  }
  summary << ",\"ended_code\":" << ended_code << ",\"ended_message\":\"" << json_escape(ended_text)
          << "\",\"resume_token\":\"" << json_escape(ended_token) << "\",\"exit_code\":" << exit_code << "}";
  std::printf("summary %s\n", summary.str().c_str());
  avb_client_destroy(client);
  return exit_code;
}
