/*
 * avatar_client.h: the C ABI of the avatar backend's native client core.
 *
 * One library does the gRPC transport (AvatarService.Converse), Opus encoding of the NPC's voice, JPEG
 * decoding of its frames, reconnect with the NPC's resume token, back-pressure and the A/V clock, for every
 * engine: Unity calls it through P/Invoke, Unreal links it. Only these functions are exported; the library's
 * own gRPC and protobuf stay hidden, so an engine's copies never clash with them.
 *
 * Threading: every function may be called from any thread and never blocks the caller on the network. A
 * background thread per session owns the stream; pushes are queued, polls return what has arrived.
 * Ownership: handles are created and destroyed by this library; strings passed in are copied before the call
 * returns; buffers passed in belong to the caller.
 *
 * Time: positions (pts, audio_start, played_until, ...) are samples at the session's sample rate on the
 * session clock, exactly as in proto/avatar/v1/converse.proto. Voice positions (at_voice_sample) count the
 * voice sent instead, pauses left out: see avb_session_voice_samples_sent.
 */
#ifndef AVATAR_BACKEND_AVATAR_CLIENT_H
#define AVATAR_BACKEND_AVATAR_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#  if defined(AVB_BUILDING_LIBRARY)
#    define AVB_API __declspec(dllexport)
#  else
#    define AVB_API __declspec(dllimport)
#  endif
#else
#  define AVB_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped when a function or struct of this header changes incompatibly. */
#define AVB_ABI_VERSION 1
AVB_API uint32_t avb_abi_version(void);

/* Results. 0 is success; 1-16 are the gRPC status code of a call or stream that failed (the server's message
 * is in avb_session_last_error / avb_client_last_error); 100 and up are the core's own. */
typedef int32_t avb_result;
#define AVB_OK 0
#define AVB_NOT_READY 100        /* a poll found nothing to return now */
#define AVB_BUFFER_TOO_SMALL 101 /* the caller's buffer cannot hold the item; nothing was taken */
#define AVB_BAD_ARGUMENT 102     /* a NULL handle, an unknown enum value, a struct_size too small ... */
#define AVB_CLOSED 103           /* the session has ended (see its last event and avb_session_last_error) */

typedef struct avb_client avb_client;
typedef struct avb_session avb_session;

/* --- client ---------------------------------------------------------------------------------------------- */

typedef struct avb_client_config {
  uint32_t struct_size;             /* sizeof(avb_client_config): lets the struct grow compatibly */
  const char* target;               /* "host:port" */
  const char* api_key;              /* NULL or "": none; sent as "authorization: Bearer <key>" */
  int32_t tls;                      /* 0 plaintext, 1 TLS */
  const char* tls_root_certs_pem;   /* NULL: the system's roots */
  const char* tls_client_cert_pem;  /* NULL: no client certificate */
  const char* tls_client_key_pem;
  uint32_t connect_timeout_ms;      /* 0: 10000 */
  uint32_t keepalive_ms;            /* 0: 30000 */
} avb_client_config;

AVB_API avb_result avb_client_create(const avb_client_config* config, avb_client** out_client);
/* Closes every session of the client (as avb_session_destroy) and frees it. */
AVB_API void avb_client_destroy(avb_client* client);
/* The last error of a client-level call, NUL-terminated and cut to capacity; returns its full length. */
AVB_API size_t avb_client_last_error(avb_client* client, char* message, size_t capacity);

/* --- session --------------------------------------------------------------------------------------------- */

typedef struct avb_session_config {
  uint32_t struct_size;             /* sizeof(avb_session_config) */
  const char* npc_id;               /* required */
  const char* character_id;         /* NULL or "": the NPC's own character (required for a new NPC) */
  uint32_t width, height;           /* 0: the NPC's size, or the model's default */
  uint32_t fps;                     /* 0: the model's */
  uint32_t sample_rate;             /* of pushed PCM and of echoed audio: 48000 or 16000 (0: 48000) */
  uint32_t jpeg_quality;            /* 0: the server's default */
  int32_t reset_memory;             /* 1: start the NPC from a fresh memory */
  int32_t reconnect;                /* 1: after a dropped connection, reopen with the NPC's resume token */
  uint32_t max_buffered_frames;     /* decoded frames held for polling; beyond it the oldest go (0: 96) */
  /* How strongly the NPC's emotions and actions show: SessionConfig.prompt_guidance (0: the server's; else
   * 1 = off up to ServerInfo.limits.max_prompt_guidance). Read only when struct_size covers it, so callers
   * built against the header without it keep working. */
  float prompt_guidance;
  /* With reconnect: how long the core keeps reopening a dropped stream before it gives up and ends the session
   * (AVB_EVENT_ENDED with the last error, as without reconnect); 0: it never gives up. Read only when struct_size
   * covers it. */
  uint32_t reconnect_timeout_ms;
} avb_session_config;

/* Starts opening the session and returns at once; AVB_EVENT_STATE events report its progress. */
AVB_API avb_result avb_session_open(avb_client* client, const avb_session_config* config,
                                    avb_session** out_session);
/* Ends the stream normally: the server saves the NPC's memory and sends AVB_EVENT_ENDED with its resume
 * token. Frames and events already received can still be polled. */
AVB_API avb_result avb_session_close(avb_session* session);
/* Cancels the stream if it is still open and frees the session. */
AVB_API void avb_session_destroy(avb_session* session);
AVB_API size_t avb_session_last_error(avb_session* session, char* message, size_t capacity);

/* Voice. PCM is mono int16 at the session's sample rate; the core cuts it into 20 ms Opus packets and numbers
 * them. avb_session_push_opus sends an already encoded raw Opus packet instead (do not mix the two within an
 * utterance). */
AVB_API avb_result avb_session_push_pcm(avb_session* session, const int16_t* samples, size_t count);
AVB_API avb_result avb_session_push_opus(avb_session* session, const uint8_t* packet, size_t size);
AVB_API avb_result avb_session_end_utterance(avb_session* session);
/* The NPC's voice sent so far on this session, in samples at its sample rate: every PCM sample that has gone
 * into a packet, the silence avb_session_end_utterance pads the last packet with, and each avb_session_push_opus
 * packet's duration. A PCM remainder shorter than one packet waits in the core and counts once a later push or
 * the end of the utterance packs it; an interrupt drops it uncounted. So right after avb_session_end_utterance
 * (before an utterance's first push) the count is exactly where the next pushed sample goes; within an
 * utterance it is behind by the pushed samples not yet packed (fewer than 20 ms). This is the count
 * at_voice_sample refers to (below); it runs on across reconnects. 0 for a NULL session. */
AVB_API uint64_t avb_session_voice_samples_sent(avb_session* session);

/* Control. */
AVB_API avb_result avb_session_set_emotion(avb_session* session, const char* name, float intensity);
AVB_API avb_result avb_session_play_action(avb_session* session, const char* preset);
/* Timed control (TTS word timings): as above, but from the block that starts nearest to voice sample
 * at_voice_sample, a position in avb_session_voice_samples_sent's count. Note the count before pushing a clip,
 * add a word's offset in the clip (in samples at the session's rate) and send the event with that position,
 * however far ahead of the video the voice goes. A point already on video applies from the next block; an
 * interrupt cancels the events whose point was not on video yet. The server holds at most
 * ServerInfo.limits.max_timed_events at once, none beyond 120 s of voice past what it received, and answers
 * others with an AVB_EVENT_SERVER of code EVENT_CODE_INVALID_EVENT. After a reconnect the core translates the
 * position to the new stream's count; a point in voice the new stream never got applies from its next block. */
AVB_API avb_result avb_session_set_emotion_at(avb_session* session, const char* name, float intensity,
                                              uint64_t at_voice_sample);
AVB_API avb_result avb_session_play_action_at(avb_session* session, const char* preset, uint64_t at_voice_sample);
AVB_API avb_result avb_session_set_listening(avb_session* session, int32_t listening);
/* Where playback is (what the player has heard), on the session clock. The core reports it to the server
 * (PlaybackProgress, at most every 100 ms) and uses it for the A/V clock and for interrupts. */
AVB_API avb_result avb_session_playback_progress(avb_session* session, uint64_t played_until);
/* Stop talking now: answered by AVB_EVENT_INTERRUPT_ACK. Until then no frame at or past the last reported
 * playback position is given out; with the answer the core drops the buffered frames and echoed audio that it
 * replaces. */
AVB_API avb_result avb_session_interrupt(avb_session* session);

/* Frames, decoded by the core. */
#define AVB_PIXELS_RGBA 0
#define AVB_PIXELS_RGB 1
typedef struct avb_frame_info {
  uint64_t index;                   /* the frame's number in the NPC's life */
  uint64_t pts;                     /* presentation time, session clock */
  uint64_t audio_start, audio_end;  /* the audio slice the frame was made from */
  uint32_t width, height;
  int32_t speaking;                 /* the NPC's voice is in this frame's slice */
} avb_frame_info;

/* The oldest buffered frame, into pixels (width * height * 4 or 3 bytes, rows top to bottom, no padding).
 * AVB_BUFFER_TOO_SMALL leaves the frame buffered and fills *info (when given) with its numbers: width and height
 * say how much to allocate before polling again. Likewise for avb_session_poll_due_frame. */
AVB_API avb_result avb_session_poll_frame(avb_session* session, int32_t pixel_format, uint8_t* pixels,
                                          size_t capacity, avb_frame_info* info);
/* The A/V clock: the newest buffered frame whose pts <= playback_pts (older ones are dropped and counted);
 * AVB_NOT_READY when no frame is due yet. */
AVB_API avb_result avb_session_poll_due_frame(avb_session* session, uint64_t playback_pts, int32_t pixel_format,
                                              uint8_t* pixels, size_t capacity, avb_frame_info* info);

/* Echoed voice (the audio the frames follow): mono int16 at the session's sample rate, in order, gapless. */
AVB_API avb_result avb_session_poll_audio(avb_session* session, int16_t* samples, size_t capacity,
                                          size_t* out_count, uint64_t* out_start);

/* Events. */
#define AVB_EVENT_STATE 1           /* code: an AVB_STATE_* value */
#define AVB_EVENT_SERVER 2          /* a SessionEvent: code is its EventCode, text its message */
#define AVB_EVENT_INTERRUPT_ACK 3   /* values: next_frame_index, replace_from_pts, dropped_samples,
                                       unheard_samples */
#define AVB_EVENT_ENDED 4           /* the stream ended: code 0 or a gRPC status code; detail: resume token */
#define AVB_STATE_OPENING 1
#define AVB_STATE_LIVE 2
#define AVB_STATE_RECONNECTING 3
#define AVB_STATE_CLOSED 4
typedef struct avb_event {
  int32_t type;
  int32_t code;
  uint64_t values[4];
  char text[512];                   /* NUL-terminated, cut to fit */
  char detail[256];
} avb_event;
AVB_API avb_result avb_session_poll_event(avb_session* session, avb_event* out_event);

typedef struct avb_stats {
  uint32_t struct_size;
  int32_t state;                    /* AVB_STATE_* */
  uint64_t frames_received, frames_dropped;   /* dropped: oldest frames evicted, or skipped by the A/V clock */
  uint32_t buffered_frames;
  uint64_t buffered_audio_samples;
  double generated_fps;             /* the server's latest SessionStats */
  double first_frame_latency_ms;    /* session open -> first frame received */
  uint32_t reconnects;
} avb_stats;
AVB_API avb_result avb_session_get_stats(avb_session* session, avb_stats* out_stats);

#ifdef __cplusplus
}
#endif

#endif /* AVATAR_BACKEND_AVATAR_CLIENT_H */
