/*
 * A scripted stand-in for the native client core (libavatar_client), built from the real header, so the
 * Unity package's P/Invoke layer can be exercised under mono without a server or the real core: every call
 * crosses the same C ABI. It echoes what it is given back in ways a test can check:
 *   - avb_client_last_error / avb_session_last_error describe the config the library received (strings, flags);
 *   - voice pushed as PCM comes back, at end of utterance, as echoed audio (same samples, on the session clock)
 *     and as frames (one per 1/fps of voice, every pixel byte = the frame's index, speaking), followed by two
 *     frames of silence (not speaking, silent echoed audio), then UTTERANCE_COMPLETE;
 *   - voice_samples_sent counts as the core does: pushed PCM in whole 20 ms packets (a shorter remainder is held),
 *     an utterance's end pads the remainder and a 6.5 ms look-ahead to whole packets, a raw Opus packet is 20 ms;
 *   - set_emotion / play_action answer with a SERVER event whose text is the name received (and " at=N", the
 *     voice sample, from set_emotion_at / play_action_at);
 *   - interrupt answers with INTERRUPT_ACK {7, 4800, 100, 200}; close with ENDED and a resume token.
 * A handle that is not live (double free, use after free) aborts the process, so ordering bugs fail tests.
 * fake_live_objects() counts the clients and sessions not yet destroyed.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AVB_BUILDING_LIBRARY
#include "avatar_backend/avatar_client.h"

#define MAX_LIVE 64
#define MAX_FRAMES 256
#define MAX_EVENTS 64
#define MAX_AUDIO (48000 * 20)

struct avb_client {
  char description[1024];
};

struct avb_session {
  avb_client* client;
  char description[1024];
  avb_session_config config;
  int closed;
  int16_t pending[MAX_AUDIO];  /* voice of the current utterance */
  size_t pending_count;
  int16_t echo[MAX_AUDIO];     /* echoed voice not yet polled */
  size_t echo_count;
  uint64_t echo_start;
  uint64_t timeline;           /* session clock: end of what was generated */
  uint64_t frame_pts[MAX_FRAMES];
  int32_t frame_speaking[MAX_FRAMES];
  size_t frame_count;
  uint64_t next_frame_index;
  avb_event events[MAX_EVENTS];
  size_t event_count;
  uint64_t played_until;
  uint64_t frames_dropped;
  uint64_t voice_samples_sent;
  size_t voice_held;           /* pushed samples short of a whole packet */
  int voice_since_end;         /* anything said since the last end of utterance */
};

static void* live[MAX_LIVE];

static void track(void* object) {
  for (int i = 0; i < MAX_LIVE; i++)
    if (!live[i]) { live[i] = object; return; }
  abort();
}

static void untrack(void* object, const char* what) {
  for (int i = 0; i < MAX_LIVE; i++)
    if (live[i] == object) { live[i] = NULL; return; }
  fprintf(stderr, "fake avatar_client: %s of a handle that is not live\n", what);
  abort();
}

static void require_live(const void* object, const char* what) {
  for (int i = 0; i < MAX_LIVE; i++)
    if (live[i] == object) return;
  fprintf(stderr, "fake avatar_client: %s on a handle that is not live\n", what);
  abort();
}

AVB_API int32_t fake_live_objects(void) {
  int count = 0;
  for (int i = 0; i < MAX_LIVE; i++) count += live[i] != NULL;
  return count;
}

static const char* text_or_null(const char* text) { return text ? text : "(null)"; }

static size_t copy_out(const char* text, char* message, size_t capacity) {
  size_t length = strlen(text);
  if (message && capacity) {
    size_t n = length < capacity - 1 ? length : capacity - 1;
    memcpy(message, text, n);
    message[n] = 0;
  }
  return length;
}

static void push_event(avb_session* s, int32_t type, int32_t code, const char* text, const char* detail) {
  if (s->event_count == MAX_EVENTS) return;
  avb_event* e = &s->events[s->event_count++];
  memset(e, 0, sizeof *e);
  e->type = type;
  e->code = code;
  snprintf(e->text, sizeof e->text, "%s", text ? text : "");
  snprintf(e->detail, sizeof e->detail, "%s", detail ? detail : "");
}

uint32_t avb_abi_version(void) { return AVB_ABI_VERSION; }

avb_result avb_client_create(const avb_client_config* config, avb_client** out_client) {
  if (!config || !out_client || config->struct_size < sizeof(avb_client_config) || !config->target)
    return AVB_BAD_ARGUMENT;
  avb_client* c = calloc(1, sizeof *c);
  snprintf(c->description, sizeof c->description,
           "target=%s api_key=%s tls=%d roots=%s cert=%s key=%s connect_timeout_ms=%u keepalive_ms=%u",
           config->target, text_or_null(config->api_key), config->tls, text_or_null(config->tls_root_certs_pem),
           text_or_null(config->tls_client_cert_pem), text_or_null(config->tls_client_key_pem),
           config->connect_timeout_ms, config->keepalive_ms);
  track(c);
  *out_client = c;
  return AVB_OK;
}

void avb_client_destroy(avb_client* client) {
  if (!client) return;
  /* As the header says, destroying a client destroys its sessions: any still live here is a leak in the
   * caller that would otherwise be freed twice. */
  for (int i = 0; i < MAX_LIVE; i++)
    if (live[i] && live[i] != client && ((avb_session*)live[i])->client == client) {
      fprintf(stderr, "fake avatar_client: client destroyed before its session\n");
      abort();
    }
  untrack(client, "avb_client_destroy");
  free(client);
}

size_t avb_client_last_error(avb_client* client, char* message, size_t capacity) {
  require_live(client, "avb_client_last_error");
  return copy_out(client->description, message, capacity);
}

avb_result avb_session_open(avb_client* client, const avb_session_config* config, avb_session** out_session) {
  require_live(client, "avb_session_open");
  if (!config || !out_session || config->struct_size < sizeof(avb_session_config) || !config->npc_id)
    return AVB_BAD_ARGUMENT;
  if (strcmp(config->npc_id, "refused") == 0) {
    snprintf(client->description, sizeof client->description, "unknown character: character_id");
    return 3; /* INVALID_ARGUMENT */
  }
  avb_session* s = calloc(1, sizeof *s);
  s->client = client;
  s->config = *config;
  s->config.npc_id = s->config.character_id = NULL;
  if (!s->config.sample_rate) s->config.sample_rate = 48000;
  if (!s->config.fps) s->config.fps = 25;
  if (!s->config.width) s->config.width = 16;
  if (!s->config.height) s->config.height = 8;
  snprintf(s->description, sizeof s->description,
           "npc_id=%s character_id=%s width=%u height=%u fps=%u sample_rate=%u jpeg_quality=%u reset_memory=%d "
           "reconnect=%d max_buffered_frames=%u prompt_guidance=%.2f reconnect_timeout_ms=%u",
           config->npc_id, text_or_null(config->character_id), config->width, config->height, config->fps,
           config->sample_rate, config->jpeg_quality, config->reset_memory, config->reconnect,
           config->max_buffered_frames, (double)config->prompt_guidance, config->reconnect_timeout_ms);
  push_event(s, AVB_EVENT_STATE, AVB_STATE_OPENING, NULL, NULL);
  push_event(s, AVB_EVENT_STATE, AVB_STATE_LIVE, NULL, NULL);
  track(s);
  *out_session = s;
  return AVB_OK;
}

avb_result avb_session_close(avb_session* s) {
  require_live(s, "avb_session_close");
  if (s->closed) return AVB_CLOSED;
  s->closed = 1;
  push_event(s, AVB_EVENT_ENDED, 0, NULL, "resume-token-of-the-fake");
  return AVB_OK;
}

void avb_session_destroy(avb_session* s) {
  if (!s) return;
  untrack(s, "avb_session_destroy");
  free(s);
}

size_t avb_session_last_error(avb_session* s, char* message, size_t capacity) {
  require_live(s, "avb_session_last_error");
  return copy_out(s->description, message, capacity);
}

avb_result avb_session_push_pcm(avb_session* s, const int16_t* samples, size_t count) {
  require_live(s, "avb_session_push_pcm");
  if (s->closed) return AVB_CLOSED;
  if (!samples || s->pending_count + count > MAX_AUDIO) return AVB_BAD_ARGUMENT;
  memcpy(s->pending + s->pending_count, samples, count * sizeof *samples);
  s->pending_count += count;
  size_t packet = s->config.sample_rate / 50, total = s->voice_held + count;
  s->voice_samples_sent += total / packet * packet;
  s->voice_held = total % packet;
  s->voice_since_end |= count > 0;
  return AVB_OK;
}

avb_result avb_session_push_opus(avb_session* s, const uint8_t* packet, size_t size) {
  require_live(s, "avb_session_push_opus");
  (void)packet;
  (void)size;
  if (s->closed) return AVB_CLOSED;
  s->voice_samples_sent += s->config.sample_rate / 50;
  s->voice_since_end = 1;
  return AVB_OK;
}

uint64_t avb_session_voice_samples_sent(avb_session* s) {
  if (!s) return 0;
  require_live(s, "avb_session_voice_samples_sent");
  return s->voice_samples_sent;
}

avb_result avb_session_end_utterance(avb_session* s) {
  require_live(s, "avb_session_end_utterance");
  if (s->closed) return AVB_CLOSED;
  uint64_t frame_samples = s->config.sample_rate / s->config.fps;
  size_t silence = 2 * frame_samples;
  if (s->echo_count + s->pending_count + silence > MAX_AUDIO) return AVB_BAD_ARGUMENT;
  if (s->echo_count == 0) s->echo_start = s->timeline;
  memcpy(s->echo + s->echo_count, s->pending, s->pending_count * sizeof *s->pending);
  memset(s->echo + s->echo_count + s->pending_count, 0, silence * sizeof *s->echo);
  s->echo_count += s->pending_count + silence;
  uint64_t voice_end = s->timeline + s->pending_count, end = voice_end + silence;
  for (uint64_t pts = s->timeline; pts + frame_samples <= end && s->frame_count < MAX_FRAMES; pts += frame_samples) {
    s->frame_speaking[s->frame_count] = pts < voice_end;
    s->frame_pts[s->frame_count++] = pts;
  }
  s->timeline = end;
  s->pending_count = 0;
  if (s->voice_since_end) {
    size_t packet = s->config.sample_rate / 50, lookahead = s->config.sample_rate * 13 / 2000;
    s->voice_samples_sent += (s->voice_held + lookahead + packet - 1) / packet * packet;
  }
  s->voice_held = 0;
  s->voice_since_end = 0;
  push_event(s, AVB_EVENT_SERVER, 6, "utterance complete", NULL);
  return AVB_OK;
}

avb_result avb_session_set_emotion(avb_session* s, const char* name, float intensity) {
  require_live(s, "avb_session_set_emotion");
  if (!name) return AVB_BAD_ARGUMENT;
  char text[512];
  snprintf(text, sizeof text, "%s@%.2f", name, intensity);
  push_event(s, AVB_EVENT_SERVER, 4, text, NULL);
  return AVB_OK;
}

avb_result avb_session_play_action(avb_session* s, const char* preset) {
  require_live(s, "avb_session_play_action");
  if (!preset) return AVB_BAD_ARGUMENT;
  push_event(s, AVB_EVENT_SERVER, 5, preset, NULL);
  return AVB_OK;
}

avb_result avb_session_set_emotion_at(avb_session* s, const char* name, float intensity, uint64_t at_voice_sample) {
  require_live(s, "avb_session_set_emotion_at");
  if (!name) return AVB_BAD_ARGUMENT;
  char text[512];
  snprintf(text, sizeof text, "%s@%.2f at=%llu", name, intensity, (unsigned long long)at_voice_sample);
  push_event(s, AVB_EVENT_SERVER, 4, text, NULL);
  return AVB_OK;
}

avb_result avb_session_play_action_at(avb_session* s, const char* preset, uint64_t at_voice_sample) {
  require_live(s, "avb_session_play_action_at");
  if (!preset) return AVB_BAD_ARGUMENT;
  char text[512];
  snprintf(text, sizeof text, "%s at=%llu", preset, (unsigned long long)at_voice_sample);
  push_event(s, AVB_EVENT_SERVER, 5, text, NULL);
  return AVB_OK;
}

avb_result avb_session_set_listening(avb_session* s, int32_t listening) {
  require_live(s, "avb_session_set_listening");
  push_event(s, AVB_EVENT_SERVER, 0, listening ? "listening" : "not listening", NULL);
  return AVB_OK;
}

avb_result avb_session_playback_progress(avb_session* s, uint64_t played_until) {
  require_live(s, "avb_session_playback_progress");
  s->played_until = played_until;
  return AVB_OK;
}

avb_result avb_session_interrupt(avb_session* s) {
  require_live(s, "avb_session_interrupt");
  push_event(s, AVB_EVENT_INTERRUPT_ACK, 0, NULL, NULL);
  avb_event* e = &s->events[s->event_count - 1];
  e->values[0] = 7;
  e->values[1] = 4800;
  e->values[2] = 100;
  e->values[3] = 200;
  return AVB_OK;
}

static avb_result take_frame(avb_session* s, size_t at, int32_t pixel_format, uint8_t* pixels, size_t capacity,
                             avb_frame_info* info) {
  size_t bytes_per_pixel = pixel_format == AVB_PIXELS_RGBA ? 4 : pixel_format == AVB_PIXELS_RGB ? 3 : 0;
  if (!bytes_per_pixel || !info) return AVB_BAD_ARGUMENT;
  size_t needed = (size_t)s->config.width * s->config.height * bytes_per_pixel;
  /* The header leaves info unspecified here; the fake leaves it empty, the least a caller can count on. */
  if (capacity < needed) return AVB_BUFFER_TOO_SMALL;
  uint64_t frame_samples = s->config.sample_rate / s->config.fps;
  uint64_t pts = s->frame_pts[at];
  uint64_t index = pts / frame_samples;
  memset(pixels, (int)(index & 0xff), needed);
  info->index = index;
  info->pts = pts;
  info->audio_start = pts;
  info->audio_end = pts + frame_samples;
  info->width = s->config.width;
  info->height = s->config.height;
  info->speaking = s->frame_speaking[at];
  s->frames_dropped += at;
  memmove(s->frame_pts, s->frame_pts + at + 1, (s->frame_count - at - 1) * sizeof *s->frame_pts);
  memmove(s->frame_speaking, s->frame_speaking + at + 1, (s->frame_count - at - 1) * sizeof *s->frame_speaking);
  s->frame_count -= at + 1;
  return AVB_OK;
}

avb_result avb_session_poll_frame(avb_session* s, int32_t pixel_format, uint8_t* pixels, size_t capacity,
                                  avb_frame_info* info) {
  require_live(s, "avb_session_poll_frame");
  if (s->frame_count == 0) return s->closed ? AVB_CLOSED : AVB_NOT_READY;
  return take_frame(s, 0, pixel_format, pixels, capacity, info);
}

avb_result avb_session_poll_due_frame(avb_session* s, uint64_t playback_pts, int32_t pixel_format, uint8_t* pixels,
                                      size_t capacity, avb_frame_info* info) {
  require_live(s, "avb_session_poll_due_frame");
  size_t due = 0;
  while (due < s->frame_count && s->frame_pts[due] <= playback_pts) due++;
  if (due == 0) return AVB_NOT_READY;
  return take_frame(s, due - 1, pixel_format, pixels, capacity, info);
}

avb_result avb_session_poll_audio(avb_session* s, int16_t* samples, size_t capacity, size_t* out_count,
                                  uint64_t* out_start) {
  require_live(s, "avb_session_poll_audio");
  if (!samples || !out_count || !out_start) return AVB_BAD_ARGUMENT;
  if (s->echo_count == 0) return AVB_NOT_READY;
  size_t n = s->echo_count < capacity ? s->echo_count : capacity;
  memcpy(samples, s->echo, n * sizeof *samples);
  memmove(s->echo, s->echo + n, (s->echo_count - n) * sizeof *samples);
  *out_count = n;
  *out_start = s->echo_start;
  s->echo_count -= n;
  s->echo_start += n;
  return AVB_OK;
}

avb_result avb_session_poll_event(avb_session* s, avb_event* out_event) {
  require_live(s, "avb_session_poll_event");
  if (!out_event) return AVB_BAD_ARGUMENT;
  if (s->event_count == 0) return AVB_NOT_READY;
  *out_event = s->events[0];
  memmove(s->events, s->events + 1, (s->event_count - 1) * sizeof *s->events);
  s->event_count--;
  return AVB_OK;
}

avb_result avb_session_get_stats(avb_session* s, avb_stats* out_stats) {
  require_live(s, "avb_session_get_stats");
  if (!out_stats || out_stats->struct_size < sizeof(avb_stats)) return AVB_BAD_ARGUMENT;
  out_stats->state = s->closed ? AVB_STATE_CLOSED : AVB_STATE_LIVE;
  out_stats->frames_received = s->next_frame_index;
  out_stats->frames_dropped = s->frames_dropped;
  out_stats->buffered_frames = (uint32_t)s->frame_count;
  out_stats->buffered_audio_samples = s->echo_count;
  out_stats->generated_fps = 25.0;
  out_stats->first_frame_latency_ms = 123.5;
  out_stats->reconnects = 2;
  return AVB_OK;
}
