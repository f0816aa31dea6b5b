"""``avatar-backend say``: stream a voice to an NPC, with emotions and actions timed on it, record its video as
MP4 and report what was measured (frame rate, latency, A/V offset, dropped frames, silence inside the
utterance)."""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avatar_backend import DEFAULT_CHARACTER_ID
from avatar_backend.client import AvatarClient, Conversation, Mp4Recorder, ServerItem
from avatar_backend.client.meters import AvSyncCheck, LipSync, LipSyncMeter, UtteranceWatch
from avatar_backend.media.audio_file import AudioFileError, load_audio
from avatar_backend.proto_gen import converse_pb2

from .common import CliError, client_tls_options, format_fields, parse_size, resolve_api_key

DEFAULT_NPC_ID = "cli-npc"
DEFAULT_OUT = "out/npc.mp4"
SESSION_SAMPLE_RATE = 48000
DEMO_SENTENCE = (
    "Hello, traveller! Welcome to our village. The blacksmith is just past the well, "
    "and the inn serves a fine stew tonight."
)


@dataclass(frozen=True)
class VoiceControl:
    """An emotion or action sent with the voice: timed ``seconds`` into it, or untimed (None: from the first
    block)."""

    kind: str                # "emotion" or "action"
    name: str                # the character's emotion or action name ("" for an emotion: the base prompt)
    intensity: float = 1.0
    seconds: float | None = None


def parse_voice_control(kind: str) -> Callable[[str], VoiceControl]:
    """The argparse type of ``--emotion NAME[:INTENSITY][@SECONDS]`` and ``--action NAME[@SECONDS]``."""

    def parse(text: str) -> VoiceControl:
        rest, at, when = text.partition("@")
        name, colon, intensity_text = rest.partition(":")
        try:
            seconds = float(when) if at else None
            intensity = float(intensity_text) if colon else 1.0
        except ValueError:
            seconds, intensity = None, math.nan
        bad_time = seconds is not None and not seconds >= 0
        bad_action = kind == "action" and (bool(colon) or not name.strip())
        if bad_time or bad_action or not 0 < intensity <= 1:  # NaN fails every comparison
            usage = "NAME[:INTENSITY][@SECONDS]" if kind == "emotion" else "NAME[@SECONDS]"
            raise argparse.ArgumentTypeError(f"{text!r} is not {usage} (e.g. happy:0.8@2.5)")
        return VoiceControl(kind, name.strip(), intensity, seconds)

    return parse


def add_say_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `say` and `demo` share: what to say and how to record it."""
    parser.add_argument(
        "--out", type=Path, default=Path(DEFAULT_OUT), metavar="FILE", help=f"MP4 to write (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--text", default=DEMO_SENTENCE, metavar="TEXT", help="sentence spoken by espeak-ng when no --audio is given"
    )
    parser.add_argument(
        "--character", default=DEFAULT_CHARACTER_ID, metavar="ID", help="character of a new NPC (default: default)"
    )
    parser.add_argument(
        "--npc", default=DEFAULT_NPC_ID, metavar="ID", help=f"NPC id; its memory persists (default {DEFAULT_NPC_ID})"
    )
    parser.add_argument("--size", type=parse_size, metavar="WxH", help="video size (default: the model's)")
    parser.add_argument("--fps", type=int, default=0, metavar="N", help="video frame rate (default: the model's)")
    parser.add_argument("--reset", action="store_true", help="start the NPC from a fresh memory")
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="noise seed of a new NPC (default: from the NPC id)"
    )
    parser.add_argument(
        "--prompt-guidance", type=float, default=None, metavar="FACTOR",
        help="how strongly the NPC's emotions and actions show in this session: the prompt guidance factor "
             "(1: off; default: the server's)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="give up after this many seconds (default 600)"
    )
    parser.add_argument(
        "--emotion", dest="controls", action="append", type=parse_voice_control("emotion"),
        metavar="NAME[:INTENSITY][@SECONDS]",
        help="one of the character's emotions, from SECONDS into the voice (e.g. happy:0.8@2.5; without @: from "
             "the start; an empty NAME: back to the base prompt); repeatable",
    )
    parser.add_argument(
        "--action", dest="controls", action="append", type=parse_voice_control("action"),
        metavar="NAME[@SECONDS]", help="one of the character's actions, at SECONDS into the voice (e.g. wave@1.2); "
                                       "repeatable",
    )


def synthesize_speech(text: str, folder: Path) -> Path:
    """Speak ``text`` with espeak-ng into a wav file in ``folder``."""
    program = shutil.which("espeak-ng")
    if program is None:
        raise CliError(
            "espeak-ng is not installed (it makes the demo's speech): `apt-get install espeak-ng`, "
            "`brew install espeak-ng`, or pass --audio FILE"
        )
    path = folder / "speech.wav"
    result = subprocess.run([program, "-w", str(path), text], capture_output=True, text=True)
    if result.returncode != 0 or not path.is_file():
        raise CliError(f"espeak-ng failed: {result.stderr.strip() or result.returncode}")
    return path


@dataclass
class SayOptions:
    """What `say` does: which server, NPC and character, the video wanted, and how the voice is sent."""

    server: str
    out: Path
    npc_id: str = DEFAULT_NPC_ID
    character_id: str = DEFAULT_CHARACTER_ID
    fast: bool = False
    width: int = 0
    height: int = 0
    fps: int = 0
    reset_memory: bool = False
    seed: int = 0
    prompt_guidance: float | None = None   # None: the server's
    api_key: str | None = None
    timeout_s: float = 600.0
    tls: Mapping[str, object] = field(default_factory=dict)  # TLS keyword arguments of AvatarClient
    # The character's mouth box (fractions of the frame) when known: `say` then scores lip sync.
    mouth_region: tuple[float, float, float, float] | None = None
    controls: list[VoiceControl] = field(default_factory=list)  # sent before the voice, timed on it


@dataclass
class SayReport:
    """What `say` measured; times are wall-clock seconds on this machine."""

    audio_seconds: float
    packets_sent: int
    realtime: bool
    frames_received: int = 0
    frames_written: int = 0
    wall_seconds: float = 0.0                          # session accepted -> last frame received
    time_to_first_frame_s: float | None = None         # session start -> first frame
    first_speaking_frame_s: float | None = None        # first audio packet sent -> first speaking frame
    generated_fps: float | None = None                 # SessionStats.generated_fps, mean over the session
    block_compute_ms: float | None = None              # server's last SessionStats.block_compute_ms
    av_offsets_ms: list[float] = field(default_factory=list)
    frames_dropped: int = 0                            # server's SessionStats.frames_dropped
    missing_frame_indices: int = 0
    utterance_complete: bool = False
    timed_out: bool = False
    width: int = 0
    height: int = 0
    fps: int = 0
    model: str = ""
    video_encoder: str = ""
    video_seconds: float = 0.0
    events: list[str] = field(default_factory=list)    # SessionEvents, as "CODE: message"
    voice_gaps_ms: list[int] = field(default_factory=list)   # silence the server put inside utterances
    lip_sync: LipSync | None = None                    # mouth opening on the frames vs the voice
    controls: list[VoiceControl] = field(default_factory=list)  # emotions and actions sent with the voice
    prompt_guidance: float = 0.0                       # the session's (SessionAccepted)

    @property
    def received_fps(self) -> float:
        return self.frames_received / self.wall_seconds if self.wall_seconds > 0 else 0.0


class SayMeter:
    """Turns the received items into the numbers of a :class:`SayReport`."""

    def __init__(
        self,
        report: SayReport,
        accepted: converse_pb2.SessionAccepted,
        session_start: float,
        log: Callable[[str], object],
        mouth_region: tuple[float, float, float, float] | None = None,
    ) -> None:
        self.report = report
        self.log = log
        self.session_start = session_start
        self.accepted_at = time.monotonic()
        self.first_audio_at: float | None = None
        self.rate = accepted.audio.sample_rate
        samples_per_frame = self.rate / accepted.video.fps
        self.watch = UtteranceWatch(samples_per_frame)
        self.sync = AvSyncCheck(samples_per_frame)
        self.frame_indices: set[int] = set()
        self.generated_fps: list[float] = []
        report.width, report.height, report.fps = accepted.video.width, accepted.video.height, accepted.video.fps
        report.prompt_guidance = accepted.prompt_guidance
        self.lip_sync = None
        if mouth_region is not None:
            self.lip_sync = LipSyncMeter(mouth_region, report.width, report.height, report.fps, self.rate)

    def add(self, item: object, pixels: np.ndarray | None = None) -> None:
        """Count one received item; ``pixels``: a frame's decoded RGB, when the caller has decoded it."""
        report, now = self.report, time.monotonic()
        if isinstance(item, converse_pb2.VideoFrame):
            report.frames_received += 1
            report.wall_seconds = now - self.accepted_at
            self.frame_indices.add(item.index)
            if report.time_to_first_frame_s is None:
                report.time_to_first_frame_s = now - self.session_start
            if item.speaking and report.first_speaking_frame_s is None and self.first_audio_at is not None:
                report.first_speaking_frame_s = now - self.first_audio_at
            report.av_offsets_ms.append(self.sync.offset_samples(item) * 1000.0 / self.rate)
            self.watch.frame(item)
            if self.lip_sync is not None and pixels is not None:
                self.lip_sync.frame(item, pixels)
        elif isinstance(item, converse_pb2.AudioEcho):
            self.sync.echo(item)
            if self.lip_sync is not None:
                self.lip_sync.echo(item)
        elif isinstance(item, converse_pb2.SessionStats):
            # Every interval counts, idle ones too: the mean is then frames made per second of session.
            self.generated_fps.append(item.generated_fps)
            if item.block_compute_ms > 0:
                report.block_compute_ms = item.block_compute_ms
            report.frames_dropped = max(report.frames_dropped, item.frames_dropped)
        elif isinstance(item, converse_pb2.SessionEvent):
            name = converse_pb2.EventCode.Name(item.code).removeprefix("EVENT_CODE_")
            report.events.append(f"{name}: {item.message}" if item.message else name)
            if item.code == converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE:
                report.utterance_complete = True
                self.watch.utterance_complete(item.details)
            elif item.code == converse_pb2.EVENT_CODE_AUDIO_GAP:
                report.voice_gaps_ms.append(int(item.details.get("gap_ms", "0")))
            elif item.code == converse_pb2.EVENT_CODE_FRAMES_DROPPED:
                self.log(f"warning: {item.message or 'frames dropped: this client read too slowly'}")

    def finish(self) -> None:
        report = self.report
        if self.lip_sync is not None:
            report.lip_sync = self.lip_sync.score()
        report.generated_fps = sum(self.generated_fps) / len(self.generated_fps) if self.generated_fps else None
        if self.frame_indices:
            span = max(self.frame_indices) - min(self.frame_indices) + 1
            report.missing_frame_indices = span - len(self.frame_indices)


async def say(pcm: np.ndarray, options: SayOptions, log: Callable[[str], object] = print) -> SayReport:
    """Make an NPC say ``pcm`` (mono int16 at 48 kHz) and record its video into ``options.out``.

    Sends the voice (paced or not) and the end of utterance while receiving; once the frames reach the end
    of the utterance, half-closes and receives what is still coming until the server ends the stream.
    """
    report = SayReport(audio_seconds=pcm.size / SESSION_SAMPLE_RATE, packets_sent=0, realtime=not options.fast,
                       controls=list(options.controls))
    async with AvatarClient(options.server, api_key=options.api_key, **options.tls) as client:
        await client.wait_ready(timeout=10.0)
        info = await client.server_info()
        report.model = f"{info.model.name}{' (random weights)' if info.model.random_weights else ''}"
        session_start = time.monotonic()
        conversation = client.converse(
            options.npc_id,
            options.character_id,
            width=options.width,
            height=options.height,
            fps=options.fps,
            sample_rate=SESSION_SAMPLE_RATE,
            reset_memory=options.reset_memory,
            seed=options.seed,
            prompt_guidance=options.prompt_guidance,
        )
        async with conversation as conv:
            meter = SayMeter(report, conv.accepted, session_start, log, options.mouth_region)
            recorder = Mp4Recorder.for_session(options.out, conv.accepted)
            report.video_encoder = recorder.video_encoder

            async def send_voice() -> None:
                await send_controls(conv, options.controls)
                meter.first_audio_at = time.monotonic()
                await conv.send_audio_pcm(pcm, realtime=report.realtime)
                await conv.end_utterance()
                report.packets_sent = conv.packets_sent
                meter.watch.end_sent(conv.voice_samples_sent)

            sender = asyncio.create_task(send_voice())
            deadline = meter.accepted_at + options.timeout_s
            try:
                while (item := await next_before(conv, deadline)) is not None:
                    if sender.done() and sender.exception() is not None:
                        raise sender.exception()  # type: ignore[misc]
                    meter.add(item, recorder.add(item))
                    if meter.watch.done and not conv.half_closed:
                        await conv.half_close()
            except TimeoutError:
                report.timed_out = True
                log(f"warning: stopped waiting after {options.timeout_s:.0f} s; the video may be incomplete")
                await conv.cancel()
            finally:
                if not sender.done():
                    sender.cancel()
                (sending_failure,) = await asyncio.gather(sender, return_exceptions=True)
                summary = recorder.close()
            if isinstance(sending_failure, Exception):
                raise sending_failure
            report.frames_written = summary.frames_written
            report.video_seconds = summary.video_seconds
            meter.finish()
    return report


async def send_controls(conv: Conversation, controls: list[VoiceControl]) -> None:
    """Send the emotions and actions before the voice, each timed to its point of the voice that follows."""
    start, rate = conv.voice_samples_sent, conv.accepted.audio.sample_rate
    for control in controls:
        at = None if control.seconds is None else start + round(control.seconds * rate)
        if control.kind == "emotion":
            await conv.emotion(control.name, control.intensity, at_voice_sample=at)
        else:
            await conv.action(preset=control.name, at_voice_sample=at)


async def next_before(conv: Conversation, deadline: float) -> ServerItem | None:
    """The conversation's next item; TimeoutError once ``deadline`` (monotonic) has passed."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    return await conv.next_item(timeout=remaining)


def print_say_report(report: SayReport, out: Path) -> None:
    sent_as = "at real-time pace" if report.realtime else "faster than real time"
    pacing = f"{sent_as}, as a microphone" if report.realtime else f"{sent_as}, as TTS"
    generated = (
        f"{report.generated_fps:.1f} fps generated (server stats)" if report.generated_fps is not None
        else "no server stats"
    )
    if report.time_to_first_frame_s is None:
        first = "no frame received"
    else:
        first = f"{report.time_to_first_frame_s * 1000:.0f} ms after session start"
        if report.first_speaking_frame_s is not None:
            first += (
                f"; first speaking frame {report.first_speaking_frame_s * 1000:.0f} ms after the first audio "
                f"packet (audio sent {sent_as})"
            )
    codec = "H.264" if report.video_encoder == "libx264" else "MPEG-4"
    rows = [
        ("model", f"{report.model}, {report.width}x{report.height} at {report.fps} fps"),
        ("audio sent", f"{report.audio_seconds:.2f} s in {report.packets_sent} Opus packets ({pacing})"),
        (
            "frames received",
            f"{report.frames_received} in {report.wall_seconds:.1f} s ({report.received_fps:.1f} fps received, "
            f"{generated})",
        ),
        ("first frame", first),
    ]
    if report.block_compute_ms is not None:
        rows.append(("block compute", f"{report.block_compute_ms:.0f} ms (the server's last block)"))
    if report.av_offsets_ms:
        offsets = report.av_offsets_ms
        rows.append((
            "A/V offset",
            f"mean {sum(offsets) / len(offsets):+.1f} ms, max {max(abs(o) for o in offsets):.1f} ms "
            "(frame pts minus the audio position it was made from)",
        ))
    rows.append((
        "dropped frames",
        f"{report.frames_dropped} (server), {report.missing_frame_indices} missing frame indices",
    ))
    rows.append((
        "voice gaps",
        f"{len(report.voice_gaps_ms)} ({sum(report.voice_gaps_ms)} ms of silence inside the utterance: the voice "
        "stalled beyond the server's jitter budget)" if report.voice_gaps_ms else "none (no silence inside the utterance)",
    ))
    if report.lip_sync is not None:
        sync = report.lip_sync
        rows.append((
            "lip sync",
            f"r = {sync.r:.2f} between the mouth opening measured on {sync.frames} frames and the opening the "
            f"voice implies (mouth {sync.opening_speaking:.3f} open while speaking, {sync.opening_silent:.3f} in "
            "silence)",
        ))
    if report.controls:
        rows.append(("controls sent", "; ".join(describe_control(c) for c in report.controls)
                     + f" (prompt guidance {report.prompt_guidance:g})"))
    unusual = [e for e in report.events if not e.startswith("UTTERANCE_COMPLETE")]
    if unusual:
        rows.append(("events", "; ".join(unusual)))
    if report.timed_out:
        rows.append(("note", "stopped waiting at the timeout; the video may miss the end of the utterance"))
    elif not report.utterance_complete:
        rows.append(("note", "the server did not report the utterance complete"))
    if report.frames_written:
        video = f"{out} ({report.frames_written} frames, {report.video_seconds:.1f} s, {codec} + AAC)"
    else:
        video = "none written (no frames received)"
    rows.append(("video", video))
    print(format_fields(rows))


def describe_control(control: VoiceControl) -> str:
    name = control.name or "(base prompt)"
    if control.kind == "emotion" and control.intensity != 1.0:
        name += f" {control.intensity:g}"
    when = "from the start" if control.seconds is None else f"at {control.seconds:g} s"
    return f"{control.kind} {name} {when}"


def say_options_from_args(args: argparse.Namespace, server: str) -> SayOptions:
    width, height = args.size or (0, 0)
    return SayOptions(
        server=server,
        out=args.out,
        npc_id=args.npc,
        character_id=args.character,
        fast=args.fast if "fast" in args else not args.realtime,
        width=width,
        height=height,
        fps=args.fps,
        reset_memory=args.reset,
        seed=args.seed,
        prompt_guidance=args.prompt_guidance,
        api_key=resolve_api_key(args),
        tls=client_tls_options(args),
        timeout_s=args.timeout,
        controls=args.controls or [],
        mouth_region=default_mouth_region() if args.character == DEFAULT_CHARACTER_ID else None,
    )


def default_mouth_region() -> tuple[float, float, float, float] | None:
    """Where the embedded default character's mouth is (its asset says), for the lip-sync score."""
    from avatar_backend.gateway.characters import default_character_files

    region = default_character_files()[0].get("mouth_region")
    return tuple(region) if region else None


def speech_for(args: argparse.Namespace, folder: Path) -> np.ndarray:
    try:
        if args.audio is not None:
            return load_audio(args.audio, SESSION_SAMPLE_RATE)
        print(f'no --audio given: speaking "{args.text}" with espeak-ng')
        return load_audio(synthesize_speech(args.text, folder), SESSION_SAMPLE_RATE)
    except AudioFileError as error:
        raise CliError(str(error)) from None


def command_say(args: argparse.Namespace) -> int:
    options = say_options_from_args(args, args.server)  # a bad key or TLS option fails before any work
    with tempfile.TemporaryDirectory(prefix="avatar-say-") as folder:
        pcm = speech_for(args, Path(folder))
    report = asyncio.run(say(pcm, options))
    print_say_report(report, args.out)
    return 0 if report.frames_received else 1
