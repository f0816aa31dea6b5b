"""The asyncio client: :class:`AvatarClient` for the unary calls, :class:`Conversation` for one Converse stream.

A minimal conversation::

    async with AvatarClient("127.0.0.1:50051") as client:
        async with client.converse("blacksmith-1", character_id="default") as conv:
            print(conv.accepted.video.width, conv.accepted.video.fps)
            await conv.send_audio_pcm(pcm_int16_48k)   # the NPC's voice, mono, at the session rate
            await conv.end_utterance()
            async for item in conv:                    # VideoFrame, AudioEcho, SessionStats, ...
                if isinstance(item, converse_pb2.VideoFrame):
                    show_at(item.pts, item.data)

Every item is the protobuf message of converse.proto, unchanged: read that file for the meaning of each field.
Failures raise :class:`AvatarError` with the gRPC status code.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from avatar_backend.client.channels import Pem, channel_target_and_credentials, warn_if_key_in_plaintext
from avatar_backend.client.errors import AvatarError
from avatar_backend.proto_gen import avatar_service_pb2, avatar_service_pb2_grpc, converse_pb2

__all__ = [
    "AUDIO_PACKET_MS",
    "AvatarClient",
    "Conversation",
    "DEFAULT_MAX_RECEIVE_MESSAGE_BYTES",
    "DEFAULT_MAX_SEND_MESSAGE_BYTES",
    "ServerItem",
    "VIDEO_CODECS",
]

#: What a Conversation yields: every ServerMessage payload after SessionAccepted.
ServerItem: TypeAlias = (
    converse_pb2.VideoFrame
    | converse_pb2.AudioEcho
    | converse_pb2.SessionStats
    | converse_pb2.SessionEvent
    | converse_pb2.InterruptAck
    | converse_pb2.SessionEnded
)

#: Codec names accepted by :meth:`AvatarClient.converse`, as in the VideoCodec enum without its prefix.
VIDEO_CODECS: dict[str, int] = {
    "jpeg": converse_pb2.VIDEO_CODEC_JPEG,
    "raw_rgb": converse_pb2.VIDEO_CODEC_RAW_RGB,
    "h264": converse_pb2.VIDEO_CODEC_H264,
}
#: Duration of the Opus packets :meth:`Conversation.send_audio_pcm` makes.
AUDIO_PACKET_MS = 20
#: Raw RGB frames at large sizes are several MB; grpc's default limit (4 MB) is too small for them.
DEFAULT_MAX_RECEIVE_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_SEND_MESSAGE_BYTES = 16 * 1024 * 1024
#: How far real-time pacing may fall behind (the caller paused) before it restarts from now.
_PACING_RESYNC_S = 0.1
_SEQUENCE_WRAP = 1 << 32


class _StreamEnd:
    """Queue marker: the stream ended; ``error`` is None for OK (or a cancel by this client)."""

    def __init__(self, error: AvatarError | None) -> None:
        self.error = error


def _pcm_int16(pcm: np.ndarray | bytes | bytearray | memoryview) -> np.ndarray:
    """Mono int16 samples from int16 bytes, an int16 array, or a float array in [-1, 1]."""
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        return np.frombuffer(pcm, dtype="<i2").astype(np.int16, copy=False)
    array = np.asarray(pcm)
    if array.ndim != 1:
        raise ValueError(f"expected mono samples (a 1-D array), got shape {array.shape}")
    if array.dtype == np.int16:
        return array
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, -1.0, 1.0) * 32767.0).astype(np.int16)
    raise ValueError(f"expected int16 or float samples, got dtype {array.dtype}")


class Conversation:
    """One Converse stream: the NPC's voice and control events out, video frames and the rest in.

    Made by :meth:`AvatarClient.converse`; use it as ``async with``. Entering sends the SessionConfig and
    waits for SessionAccepted (an :class:`AvatarError` if refused). Leaving half-closes the stream and waits
    for the server to end it, which is when the NPC's memory is saved; leaving through an exception cancels
    the stream instead.

    Received items are read by a background task into an unbounded buffer, so sending never waits for
    reading and :meth:`interrupt` can await its answer; read them promptly (``async for item in conv``), or
    frames pile up in this process instead of being dropped by the server.

    The send methods may be called from several tasks; each message is written whole. When the server ends
    the stream while a message is being written, grpcio can report INTERNAL "Internal error from Core"
    instead of the server's status (grpc/grpc#36066); the error from iterating is then that INTERNAL too.
    """

    def __init__(
        self,
        stub: avatar_service_pb2_grpc.AvatarServiceStub,
        config: converse_pb2.SessionConfig,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> None:
        self._stub = stub
        self._config = config
        self._metadata = tuple(metadata)
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._items: asyncio.Queue[ServerItem | _StreamEnd] = asyncio.Queue()
        self._ended: _StreamEnd | None = None  # set once the iterator has returned the end
        self._stream_end: _StreamEnd | None = None  # set by the reader when the stream ends
        self._error_raised = False
        self._pending_acks: collections.deque[asyncio.Future[converse_pb2.InterruptAck]] = collections.deque()
        self._write_lock = asyncio.Lock()
        self._half_closed = False
        self._encoder: Any = None
        self._pcm_tail = np.zeros(0, dtype=np.int16)
        self._pacing_origin: tuple[float, int] | None = None  # (monotonic time, samples sent then)
        #: The server's answer to the SessionConfig; set once the conversation is open.
        self.accepted: converse_pb2.SessionAccepted | None = None
        #: Sequence number the next audio packet gets.
        self.next_sequence_number = 0
        #: Audio packets sent so far.
        self.packets_sent = 0
        #: Voice sent so far, in samples at the session rate (including the padding of utterance ends): the
        #: count that ``at_voice_sample`` of :meth:`emotion` and :meth:`action` refers to.
        self.voice_samples_sent = 0
        self._last_packet_samples = 0  # the duration of the last audio packet sent (0: none yet)
        #: The server's SessionEnded (the NPC's resume token) once the stream ended normally.
        self.ended: converse_pb2.SessionEnded | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    async def __aenter__(self) -> "Conversation":
        await self.open()
        return self

    async def __aexit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.cancel()

    async def open(self) -> converse_pb2.SessionAccepted:
        """Send the SessionConfig and wait for SessionAccepted (done by ``async with``)."""
        if self._call is not None:
            raise RuntimeError("the conversation is already open")
        self._call = self._stub.Converse(metadata=self._metadata or None)
        try:
            await self._call.write(converse_pb2.ClientMessage(config=self._config))
            first = await self._call.read()
        except grpc.RpcError as error:
            raise AvatarError.from_rpc_error(error) from None
        if first is grpc.aio.EOF:
            raise await self._status_error("the server ended the stream before accepting the session")
        if first.WhichOneof("message") != "accepted":
            self._call.cancel()
            raise AvatarError(
                grpc.StatusCode.INTERNAL,
                f"expected SessionAccepted first, got {first.WhichOneof('message')}",
            )
        self.accepted = first.accepted
        self._reader = asyncio.create_task(self._read_loop(), name=f"converse-{self._config.npc_id}")
        return self.accepted

    async def half_close(self) -> None:
        """Tell the server nothing more will be sent; keep iterating to receive what is still coming.

        The server first generates the voice it was sent (an utterance in progress ends there: its frames and its
        UTTERANCE_COMPLETE still come), then stops generating, saves the NPC's memory and ends the stream.
        Idempotent.
        """
        self._require_open()
        async with self._write_lock:
            if self._half_closed:
                return
            self._half_closed = True
            try:
                await self._call.done_writing()
            except (grpc.RpcError, asyncio.InvalidStateError):
                pass  # the stream already ended; its status is reported by the reader

    async def close(self, timeout: float | None = 30.0) -> None:
        """Half-close, wait for the server to end the stream, and discard items not read.

        Raises :class:`AvatarError` if the stream ended with an error that iteration has not raised yet.
        After ``timeout`` seconds the stream is cancelled instead.
        """
        if self._call is None:
            return
        if self._reader is None:  # open() failed: there is nothing to wait for
            self._call.cancel()
            return
        if not self._call.done():
            await self.half_close()
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except asyncio.TimeoutError:
            await self.cancel()
        end = self._stream_end
        if end is not None and end.error is not None and not self._error_raised:
            self._error_raised = True
            raise end.error

    async def cancel(self) -> None:
        """End the stream now, without waiting for the server (the NPC's memory may not be saved)."""
        if self._call is None:
            return
        self._call.cancel()
        if self._reader is not None:
            try:
                await self._reader
            except asyncio.CancelledError:
                pass

    @property
    def done(self) -> bool:
        """Whether the stream has ended (items may still be buffered)."""
        return self._stream_end is not None

    @property
    def half_closed(self) -> bool:
        """Whether :meth:`half_close` was called (nothing more can be sent)."""
        return self._half_closed

    # -- sending --------------------------------------------------------------------------------------

    async def send_audio_pcm(
        self, pcm: np.ndarray | bytes, *, realtime: bool = False
    ) -> int:
        """Send the NPC's voice: mono samples at the session rate (``accepted.audio.sample_rate``).

        ``pcm`` is int16 (array or little-endian bytes) or float in [-1, 1]. It is encoded to Opus packets
        of 20 ms and numbered; a remainder shorter than one packet waits for the next call or for
        :meth:`end_utterance`. With ``realtime`` the packets leave at the pace of the audio, as from a live
        microphone; without it they leave as fast as possible, as from TTS (the server queues them).
        Returns the number of packets sent by this call.
        """
        self._require_open()
        samples = _pcm_int16(pcm)
        if self._pcm_tail.size:
            samples = np.concatenate([self._pcm_tail, samples])
        encoder = self._opus_encoder()
        frame = encoder.frame_samples
        whole = samples.size - samples.size % frame
        self._pcm_tail = samples[whole:].copy()
        for start in range(0, whole, frame):
            if realtime:
                await self._pace()
            await self._send_audio_packet(encoder.encode(samples[start : start + frame]), frame)
        if not realtime:
            self._pacing_origin = None
        return whole // frame

    async def send_opus_packet(self, payload: bytes) -> int:
        """Send one already-encoded raw Opus packet (mono, 10-60 ms); returns its sequence number.

        Use this when the engine or TTS produces Opus itself; do not mix it with a pending
        :meth:`send_audio_pcm` remainder. The packet's duration counts in :attr:`voice_samples_sent` (one that is not
        valid Opus counts as long as the packet before it: the server conceals its slot with that much audio).
        """
        from avatar_backend.media.opus import OpusDecodeError, packet_samples

        self._require_open()
        rate = self.accepted.audio.sample_rate
        try:
            samples = packet_samples(bytes(payload), rate)
        except OpusDecodeError:
            samples = self._last_packet_samples or rate * AUDIO_PACKET_MS // 1000
        return await self._send_audio_packet(payload, samples)

    async def _send_audio_packet(self, payload: bytes, samples: int) -> int:
        sequence_number = self.next_sequence_number
        await self._write(
            converse_pb2.ClientMessage(
                audio=converse_pb2.AudioPacket(sequence_number=sequence_number, payload=bytes(payload))
            )
        )
        self.next_sequence_number = (sequence_number + 1) % _SEQUENCE_WRAP
        self.packets_sent += 1
        self.voice_samples_sent += samples
        self._last_packet_samples = samples
        return sequence_number

    async def end_utterance(self) -> None:
        """The NPC finished saying something: send the held remainder padded with silence, long enough that
        the encoder's look-ahead lets the last real sample out, then EndOfUtterance. The NPC then listens or
        idles until the next audio."""
        self._require_open()
        if self._encoder is not None or self._pcm_tail.size:
            encoder = self._opus_encoder()
            frame = encoder.frame_samples
            needed = self._pcm_tail.size + encoder.lookahead_samples
            padded = np.zeros(-(-needed // frame) * frame, dtype=np.int16)
            padded[: self._pcm_tail.size] = self._pcm_tail
            self._pcm_tail = np.zeros(0, dtype=np.int16)
            for start in range(0, padded.size, frame):
                await self._send_audio_packet(encoder.encode(padded[start : start + frame]), frame)
        await self._write(converse_pb2.ClientMessage(end_of_utterance=converse_pb2.EndOfUtterance()))
        self._pacing_origin = None

    async def emotion(self, name: str, intensity: float = 1.0, *, at_voice_sample: int | None = None) -> None:
        """Switch to one of the character's emotion prompts (intensity 0-1) from the next block on, or from
        the point ``at_voice_sample`` of the NPC's voice: a :attr:`voice_samples_sent` count, e.g. the count before a
        TTS clip plus a word's offset in it (exact to a 20 ms packet: a remainder held by
        :meth:`send_audio_pcm` is not sent yet)."""
        await self._write(converse_pb2.ClientMessage(emotion=converse_pb2.EmotionEvent(
            name=name, intensity=intensity, at_voice_sample=at_voice_sample)))

    async def action(self, *, preset: str | None = None, free_text: str | None = None,
                     at_voice_sample: int | None = None) -> None:
        """Start an action from the next block on, or at ``at_voice_sample`` (as :meth:`emotion`): a named
        preset of the character, or free text."""
        if (preset is None) == (free_text is None):
            raise ValueError("give exactly one of preset and free_text")
        event = converse_pb2.ActionEvent(preset=preset, free_text=free_text, at_voice_sample=at_voice_sample)
        await self._write(converse_pb2.ClientMessage(action=event))

    async def listening(self, listening: bool) -> None:
        """Whether the player is speaking now: the NPC shows listening behaviour instead of idling."""
        await self._write(
            converse_pb2.ClientMessage(listening=converse_pb2.ListeningEvent(listening=listening))
        )

    async def playback_progress(self, played_until: int) -> None:
        """Tell the server how far the player has heard, in samples on the session clock (send it every
        few hundred milliseconds); an :meth:`interrupt` without a position uses the latest one."""
        await self._write(converse_pb2.ClientMessage(
            playback=converse_pb2.PlaybackProgress(played_until=played_until)))

    async def interrupt(self, played_until: int | None = None,
                        timeout: float | None = 10.0) -> converse_pb2.InterruptAck:
        """Stop the NPC talking now and return the server's InterruptAck.

        ``played_until``: how far the player has heard, in samples on the session clock (None: the latest
        :meth:`playback_progress`, else the end of the video made). Queued audio not yet generated is
        dropped, and so is a remainder held by :meth:`send_audio_pcm`. Discard the buffered frames with
        ``index < ack.next_frame_index`` and ``pts >= ack.replace_from_pts``, and the echoed audio from
        ``ack.replace_from_pts`` on. The ack is also yielded by the iterator, in stream order.
        """
        self._require_open()
        self._pcm_tail = np.zeros(0, dtype=np.int16)
        self._pacing_origin = None
        ack: asyncio.Future[converse_pb2.InterruptAck] = asyncio.get_running_loop().create_future()
        self._pending_acks.append(ack)
        sent = False
        try:
            request = converse_pb2.InterruptRequest()
            if played_until is not None:
                request.played_until = played_until
            await self._write(converse_pb2.ClientMessage(interrupt=request))
            sent = True
            return await asyncio.wait_for(asyncio.shield(ack), timeout)
        except asyncio.TimeoutError:
            raise AvatarError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no InterruptAck within {timeout} s"
            ) from None
        finally:
            if not ack.done():
                ack.cancel()
                # A sent interrupt is still answered: its cancelled waiter keeps its place and takes that ack.
                if not sent:
                    try:
                        self._pending_acks.remove(ack)
                    except ValueError:
                        pass

    # -- receiving ------------------------------------------------------------------------------------

    def __aiter__(self) -> "Conversation":
        return self

    async def __anext__(self) -> ServerItem:
        item = await self.next_item()
        if item is None:
            raise StopAsyncIteration
        return item

    async def next_item(self, timeout: float | None = None) -> ServerItem | None:
        """The next received item, or None once the stream has ended OK.

        Raises :class:`AvatarError` when the stream ended with an error, and :class:`TimeoutError` when
        nothing arrived within ``timeout`` seconds.
        """
        self._require_open()
        if self._ended is not None:
            return self._finish(self._ended)
        try:
            item = await asyncio.wait_for(self._items.get(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"nothing received within {timeout} s") from None
        if isinstance(item, _StreamEnd):
            self._ended = item
            return self._finish(item)
        return item

    def _finish(self, end: _StreamEnd) -> None:
        if end.error is not None and not self._error_raised:
            self._error_raised = True
            raise end.error
        return None

    async def _read_loop(self) -> None:
        error: AvatarError | None = None
        try:
            while True:
                message = await self._call.read()
                if message is grpc.aio.EOF:
                    break
                kind = message.WhichOneof("message")
                if kind is None or kind == "accepted":
                    continue  # a field this client does not know, or a repeated accept: nothing to show
                item = getattr(message, kind)
                if kind == "interrupt_ack":
                    self._resolve_ack(item)
                elif kind == "ended":
                    self.ended = item
                self._items.put_nowait(item)
        except asyncio.CancelledError:
            pass
        except grpc.RpcError as rpc_error:
            if rpc_error.code() != grpc.StatusCode.CANCELLED or not self._call.cancelled():
                error = AvatarError.from_rpc_error(rpc_error)
        else:
            error = await self._final_status_error()
        end = _StreamEnd(error)
        self._stream_end = end
        while self._pending_acks:
            waiter = self._pending_acks.popleft()
            if not waiter.done():
                waiter.set_exception(
                    error or AvatarError(grpc.StatusCode.CANCELLED, "the stream ended before the InterruptAck")
                )
        self._items.put_nowait(end)

    def _resolve_ack(self, ack: converse_pb2.InterruptAck) -> None:
        # Acks come in the order the interrupts were sent: the oldest waiter's, even when it stopped waiting.
        if self._pending_acks:
            waiter = self._pending_acks.popleft()
            if not waiter.done():
                waiter.set_result(ack)

    async def _final_status_error(self) -> AvatarError | None:
        code = await self._call.code()
        if code in (grpc.StatusCode.OK, None):
            return None
        if code == grpc.StatusCode.CANCELLED and self._call.cancelled():
            return None
        return AvatarError.from_status(code, await self._call.details() or "",
                                       await self._call.trailing_metadata())

    async def _status_error(self, fallback: str) -> AvatarError:
        code = await self._call.code()
        if code in (grpc.StatusCode.OK, None):
            return AvatarError(grpc.StatusCode.INTERNAL, fallback)
        return AvatarError.from_status(code, await self._call.details() or fallback,
                                       await self._call.trailing_metadata())

    # -- helpers --------------------------------------------------------------------------------------

    async def _write(self, message: converse_pb2.ClientMessage) -> None:
        self._require_open()
        async with self._write_lock:
            if self._half_closed:
                raise RuntimeError("the conversation was half-closed; nothing more can be sent")
            try:
                await self._call.write(message)
            except grpc.RpcError as error:
                raise await self._write_failure(AvatarError.from_rpc_error(error)) from None
            except asyncio.InvalidStateError:
                # grpc.aio raises this when writing to a stream that has already ended.
                raise await self._write_failure(
                    AvatarError(grpc.StatusCode.CANCELLED, "the stream has ended")
                ) from None

    async def _write_failure(self, write_error: AvatarError) -> AvatarError:
        """Why a write failed: writes fail because the stream ended, and the reader learns the real status
        (the write itself may only say "Internal error from Core")."""
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 1.0)
        end = self._stream_end
        if end is not None and end.error is not None:
            return end.error
        return write_error

    def _opus_encoder(self) -> Any:
        if self._encoder is None:
            from avatar_backend.media.opus import OpusEncoder  # loads libopus on first audio only

            rate = self.accepted.audio.sample_rate if self.accepted else self._config.audio.sample_rate
            # In-band FEC lets the server's jitter buffer rebuild a lost packet from the next one.
            self._encoder = OpusEncoder(
                rate, frame_ms=AUDIO_PACKET_MS, inband_fec=True, packet_loss_percent=5
            )
        return self._encoder

    async def _pace(self) -> None:
        """Sleep until the packet starting at ``voice_samples_sent`` is due, as if captured live."""
        rate = self.accepted.audio.sample_rate if self.accepted else 48000
        now = time.monotonic()
        if self._pacing_origin is None:
            self._pacing_origin = (now, self.voice_samples_sent)
            return
        origin_time, origin_samples = self._pacing_origin
        due = origin_time + (self.voice_samples_sent - origin_samples) / rate
        if now > due + _PACING_RESYNC_S:
            self._pacing_origin = (now, self.voice_samples_sent)
        elif due > now:
            await asyncio.sleep(due - now)

    def _require_open(self) -> None:
        if self._call is None:
            raise RuntimeError("the conversation is not open; use `async with client.converse(...)`")


class AvatarClient:
    """Asyncio client of AvatarService. Create it inside a running event loop; close it when done.

    ``target`` is ``"host:port"``, or ``"grpcs://host:port"`` for TLS. ``api_key`` is sent as
    ``authorization: Bearer <key>`` on every call (a warning is logged once when that goes in plain text to
    a host other than loopback).

    TLS: ``tls=True`` checks the server against the system's trusted roots, ``root_certificates`` against
    that CA instead (PEM bytes or a file path); ``client_certificate`` and ``client_key`` (PEM) answer a
    server that requires client certificates; ``credentials`` takes ready-made
    ``grpc.ssl_channel_credentials(...)``. Without any of these the channel is plaintext.
    Every method raises :class:`AvatarError` when the server answers with an error status.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: Pem | None = None,
        client_certificate: Pem | None = None,
        client_key: Pem | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_MESSAGE_BYTES,
        max_send_message_bytes: int = DEFAULT_MAX_SEND_MESSAGE_BYTES,
        options: Iterable[tuple[str, Any]] = (),
    ) -> None:
        self.target = target
        channel_options = [
            ("grpc.max_receive_message_length", max_receive_message_bytes),
            ("grpc.max_send_message_length", max_send_message_bytes),
            *options,
        ]
        channel_target, credentials = channel_target_and_credentials(
            target, tls=tls, root_certificates=root_certificates, client_certificate=client_certificate,
            client_key=client_key, credentials=credentials,
        )
        if credentials is not None:
            self._channel = grpc.aio.secure_channel(channel_target, credentials, options=channel_options)
        else:
            if api_key:
                warn_if_key_in_plaintext(channel_target)
            self._channel = grpc.aio.insecure_channel(channel_target, options=channel_options)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        self._stub = avatar_service_pb2_grpc.AvatarServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    @classmethod
    async def connect(cls, target: str, *, timeout: float | None = 10.0, **kwargs: Any) -> "AvatarClient":
        """Make a client and wait until its channel is connected (see :meth:`wait_ready`)."""
        client = cls(target, **kwargs)
        try:
            await client.wait_ready(timeout)
        except BaseException:
            await client.close()
            raise
        return client

    async def __aenter__(self) -> "AvatarClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; open conversations are cancelled."""
        await self._channel.close()

    async def wait_ready(self, timeout: float | None = 10.0) -> None:
        """Wait until the channel is connected; UNAVAILABLE :class:`AvatarError` after ``timeout`` s."""
        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout)
        except asyncio.TimeoutError:
            raise AvatarError(
                grpc.StatusCode.UNAVAILABLE, f"no server reachable at {self.target} within {timeout} s"
            ) from None

    async def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """The grpc.health.v1 status of ``service`` ("" = the server): "SERVING", "NOT_SERVING", ..."""
        response = await self._unary(
            self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    # -- conversations --------------------------------------------------------------------------------

    def converse(
        self,
        npc_id: str,
        character_id: str = "",
        *,
        width: int = 0,
        height: int = 0,
        fps: int = 0,
        codec: str = "jpeg",
        jpeg_quality: int = 0,
        sample_rate: int = 48000,
        reset_memory: bool = False,
        seed: int = 0,
        resume_token: str = "",
        stats_interval_ms: int = 0,
        echo_audio: bool = True,
        prompt_guidance: float | None = None,
    ) -> Conversation:
        """A conversation with NPC ``npc_id``; use it as ``async with``.

        ``character_id`` is required for a new NPC. ``width``/``height``/``fps`` of 0 take the model's
        defaults (see :meth:`server_info`); ``codec`` is one of :data:`VIDEO_CODECS`. The voice is sent as
        Opus at ``sample_rate`` (16000 or 48000). ``prompt_guidance``: how strongly emotions and actions show
        (1 = off, None = the server's default; see ServerInfo.model.prompt_guidance and
        ServerInfo.limits.max_prompt_guidance). The other arguments are SessionConfig's fields.
        """
        if codec not in VIDEO_CODECS:
            raise ValueError(f"codec must be one of {sorted(VIDEO_CODECS)}, got {codec!r}")
        config = converse_pb2.SessionConfig(
            npc_id=npc_id,
            character_id=character_id,
            video=converse_pb2.VideoFormat(
                width=width, height=height, fps=fps, codec=VIDEO_CODECS[codec], jpeg_quality=jpeg_quality
            ),
            audio=converse_pb2.AudioFormat(
                codec=converse_pb2.AUDIO_CODEC_OPUS, sample_rate=sample_rate, channels=1
            ),
            reset_memory=reset_memory,
            resume_token=resume_token,
            seed=seed,
            stats_interval_ms=stats_interval_ms,
            echo_audio=echo_audio,
            prompt_guidance=prompt_guidance,
        )
        return Conversation(self._stub, config, self._metadata)

    # -- characters -----------------------------------------------------------------------------------

    async def register_character(
        self,
        character_id: str,
        image: str | Path | bytes,
        base_prompt: str,
        *,
        emotion_prompts: Mapping[str, str] | None = None,
        action_prompts: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> avatar_service_pb2.Character:
        """Register a character from a PNG/JPEG (a path or its bytes) and its prompts.

        ALREADY_EXISTS when the id is taken and ``replace`` is false.
        """
        reference_image = image if isinstance(image, bytes) else Path(image).expanduser().read_bytes()
        request = avatar_service_pb2.RegisterCharacterRequest(
            character_id=character_id,
            reference_image=reference_image,
            base_prompt=base_prompt,
            emotion_prompts=dict(emotion_prompts or {}),
            action_prompts=dict(action_prompts or {}),
            replace=replace,
        )
        return await self._unary(self._stub.RegisterCharacter, request)

    async def get_character(self, character_id: str) -> avatar_service_pb2.Character:
        return await self._unary(
            self._stub.GetCharacter, avatar_service_pb2.GetCharacterRequest(character_id=character_id)
        )

    async def list_characters(self) -> list[avatar_service_pb2.Character]:
        """All characters, sorted by id."""
        response = await self._unary(self._stub.ListCharacters, avatar_service_pb2.ListCharactersRequest())
        return list(response.characters)

    async def delete_character(self, character_id: str, *, delete_npcs: bool = False) -> int:
        """Delete a character; returns the number of NPCs deleted with it.

        FAILED_PRECONDITION when NPCs use it and ``delete_npcs`` is false.
        """
        response = await self._unary(
            self._stub.DeleteCharacter,
            avatar_service_pb2.DeleteCharacterRequest(character_id=character_id, delete_npcs=delete_npcs),
        )
        return response.npcs_deleted

    # -- NPCs -----------------------------------------------------------------------------------------

    async def get_npc(self, npc_id: str) -> avatar_service_pb2.Npc:
        return await self._unary(self._stub.GetNpc, avatar_service_pb2.GetNpcRequest(npc_id=npc_id))

    async def list_npcs(self, character_id: str = "") -> list[avatar_service_pb2.Npc]:
        """NPCs sorted by id, all of them or those of one character."""
        response = await self._unary(
            self._stub.ListNpcs, avatar_service_pb2.ListNpcsRequest(character_id=character_id)
        )
        return list(response.npcs)

    async def reset_npc(self, npc_id: str) -> avatar_service_pb2.Npc:
        """Forget the NPC's memory; its next session starts fresh. ABORTED while it is live."""
        return await self._unary(self._stub.ResetNpc, avatar_service_pb2.ResetNpcRequest(npc_id=npc_id))

    async def delete_npc(self, npc_id: str) -> None:
        """Delete the NPC and its memory. ABORTED while it is live."""
        await self._unary(self._stub.DeleteNpc, avatar_service_pb2.DeleteNpcRequest(npc_id=npc_id))

    # -- server ---------------------------------------------------------------------------------------

    async def server_info(self) -> avatar_service_pb2.ServerInfo:
        """What the server runs (model, random weights or not) and accepts (sizes, fps, codecs, limits)."""
        return await self._unary(self._stub.GetServerInfo, avatar_service_pb2.GetServerInfoRequest())

    async def _unary(self, method: Any, request: Any, *, timeout: float | None = 30.0) -> Any:
        try:
            return await method(request, metadata=self._metadata or None, timeout=timeout)
        except grpc.RpcError as error:
            raise AvatarError.from_rpc_error(error) from None
