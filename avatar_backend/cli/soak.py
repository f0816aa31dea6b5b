"""``avatar-backend soak``: a real server under NPCs that talk for as long as it runs, and what its processes
hold in memory, window by window.

It starts ``avatar-backend serve`` (the gateway process and its worker process, as a studio runs them) on a
free port with a temporary data dir. N NPCs of the default character talk to it over gRPC through the Python
client at the pace of a live voice: 3.2 s utterances (speech-like tone, Opus) and 0.8 s pauses, an emotion
event every few utterances. Every ``--session-seconds`` each session ends (the NPC's memory is parked) and a
new one resumes the same NPC, so session churn runs too. Every few seconds it reads the resident set size of
the server process and of each process below it from /proc (Linux).

Per window (``--window-seconds``, a minute by default) it reports each process's median RSS, the frames
received against the frames due at the stream's rate, the video's lead (a frame's pts minus its arrival on the
session's clock: flat while the server keeps real time; falling when it falls behind, rising when each reply
comes later than the one before) and the sessions opened and resumed; then each process's growth from the
second window (the first is warm-up) to the last, and its trend (least squares over those windows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avatar_backend import DEFAULT_CHARACTER_ID
from avatar_backend.client import AvatarClient
from avatar_backend.media.synthetic_voice import speech_like_voice
from avatar_backend.proto_gen import avatar_service_pb2, converse_pb2

from .common import CliError, display_path, format_table, parse_positive_int
from .demo import SERVER_START_TIMEOUT_S, ServerProcess, free_port, wait_for_server
from .say import SESSION_SAMPLE_RATE

UTTERANCE_S = 3.2
PAUSE_S = 0.8
#: An emotion event every this many utterances, cycling through the default character's emotions.
EMOTION_EVERY = 3
EMOTIONS = ("happy", "neutral", "sad", "neutral", "angry", "neutral", "surprised", "neutral")
#: How often the processes' memory is read.
SAMPLE_INTERVAL_S = 5.0
MIB = 2**20


# ---------------------------------------------------------------------------------------------------------
# Processes and their memory (Linux /proc)
# ---------------------------------------------------------------------------------------------------------


def resident_bytes(pid: int) -> int | None:
    """The process's resident set size, None once it has gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def child_processes(pid: int) -> list[int]:
    """The processes whose parent is ``pid``."""
    children = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)


def process_label(pid: int) -> str:
    """``worker`` (rank 0), ``worker rank R`` (a follower) or the program's name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            args = [a.decode(errors="replace") for a in cmdline.read().split(b"\0") if a]
    except (FileNotFoundError, ProcessLookupError):
        return f"pid {pid}"
    if "avatar_backend.worker" in args:
        if "--follow-rank" in args:
            return f"worker rank {args[args.index('--follow-rank') + 1]}"
        return "worker"
    return Path(args[0]).name if args else f"pid {pid}"


def server_memory(server_pid: int) -> dict[str, int]:
    """RSS of the server (``gateway``) and of every process below it, by label."""
    sizes: dict[str, int] = {}
    rss = resident_bytes(server_pid)
    if rss is not None:
        sizes["gateway"] = rss
    pending = child_processes(server_pid)
    while pending:
        pid = pending.pop(0)
        rss = resident_bytes(pid)
        if rss is not None:
            label = process_label(pid)
            sizes[label if label not in sizes else f"{label} ({pid})"] = rss
        pending.extend(child_processes(pid))
    return sizes


# ---------------------------------------------------------------------------------------------------------
# The NPCs
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SoakLog:
    """What the NPCs saw, stamped with seconds since the soak started."""

    started: float
    frames: list[tuple[float, float]] = field(default_factory=list)   # (arrival, video lead on the session clock)
    sessions: list[tuple[float, bool]] = field(default_factory=list)  # (opened, resumed)
    memory: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    frames_missing: int = 0  # frame indices a session skipped (frames the server dropped)

    def now(self) -> float:
        return time.monotonic() - self.started


async def talk(client: AvatarClient, npc_id: str, log: SoakLog, until: float, session_s: float) -> None:
    """Sessions of NPC ``npc_id`` one after another until ``until``, each talking for ``session_s``."""
    voice = speech_like_voice(SESSION_SAMPLE_RATE, UTTERANCE_S)
    utterances = 0
    while log.now() < until:
        async with client.converse(npc_id, DEFAULT_CHARACTER_ID, sample_rate=SESSION_SAMPLE_RATE,
                                   echo_audio=False) as conv:
            opened = time.monotonic()
            log.sessions.append((log.now(), conv.accepted.resumed))

            async def receive() -> None:
                indices = []
                try:
                    async for item in conv:
                        if isinstance(item, converse_pb2.VideoFrame):
                            log.frames.append((log.now(), item.pts_us / 1e6 - (time.monotonic() - opened)))
                            indices.append(item.index)
                finally:
                    if indices:
                        log.frames_missing += indices[-1] - indices[0] + 1 - len(indices)

            receiver = asyncio.create_task(receive())
            session_end = min(until, log.now() + session_s)
            try:
                while log.now() < session_end:
                    if utterances % EMOTION_EVERY == 0:
                        await conv.emotion(EMOTIONS[(utterances // EMOTION_EVERY) % len(EMOTIONS)])
                    await conv.send_audio_pcm(voice, realtime=True)
                    await conv.end_utterance()
                    utterances += 1
                    await asyncio.sleep(PAUSE_S)
                await conv.close()
            finally:
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)


async def sample_memory(server_pid: int, log: SoakLog, until: float) -> None:
    while log.now() < until:
        log.memory.append((log.now(), server_memory(server_pid)))
        await asyncio.sleep(SAMPLE_INTERVAL_S)


async def soak(target: str, server_pid: int, npcs: int, seconds: float, session_s: float) -> SoakLog:
    log = SoakLog(started=time.monotonic())
    async with AvatarClient(target) as client:
        sampler = asyncio.create_task(sample_memory(server_pid, log, seconds))
        await asyncio.gather(*(talk(client, f"soak-npc-{i}", log, seconds, session_s) for i in range(npcs)))
        await sampler
    return log


# ---------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------


def windows_of(log: SoakLog, seconds: float, window_s: float, npcs: int, fps: float) -> list[dict]:
    """One row per window: median RSS per process (MiB), frames received and due, video lead, sessions."""
    rows = []
    for index in range(max(1, int(np.ceil(seconds / window_s)))):
        start, end = index * window_s, min(seconds, (index + 1) * window_s)
        memory = [sizes for t, sizes in log.memory if start <= t < end] or [log.memory[-1][1]]
        labels = sorted({label for sizes in memory for label in sizes})
        lead = [lead for t, lead in log.frames if start <= t < end]
        sessions = [resumed for t, resumed in log.sessions if start <= t < end]
        rows.append({
            "window": index + 1, "start_s": start, "end_s": end,
            "rss_mib": {label: round(statistics.median(s[label] for s in memory if label in s) / MIB, 1)
                        for label in labels},
            "frames_received": len(lead), "frames_due": round(npcs * fps * (end - start)),
            "video_lead_median_ms": round(1000 * statistics.median(lead)) if lead else None,
            "video_lead_min_ms": round(1000 * min(lead)) if lead else None,
            "sessions_opened": len(sessions), "sessions_resumed": sum(sessions),
        })
    return rows


def growth_of(rows: list[dict]) -> dict[str, float]:
    """RSS growth per process, MiB, from the second window (the first is warm-up) to the last."""
    if len(rows) < 3:
        return {}
    first, last = rows[1]["rss_mib"], rows[-1]["rss_mib"]
    return {label: round(last[label] - first[label], 1) for label in first if label in last}


def slope_of(rows: list[dict]) -> dict[str, float]:
    """RSS trend per process, MiB per minute: the least-squares line through the window medians from the second
    window on. Two points say what one window's allocator happened to hold; the line says whether memory grows."""
    if len(rows) < 3:
        return {}
    slopes = {}
    for label in rows[1]["rss_mib"]:
        points = [((row["start_s"] + row["end_s"]) / 120.0, row["rss_mib"][label]) for row in rows[1:]
                  if label in row["rss_mib"]]
        if len(points) >= 2:
            minutes, mib = np.array(points).T
            slopes[label] = round(float(np.polyfit(minutes, mib, 1)[0]), 2)
    return slopes


def print_report(report: dict) -> None:
    labels = sorted({label for row in report["windows"] for label in row["rss_mib"]})
    print(format_table(
        ["window", *[f"{label} MiB" for label in labels], "frames (due)", "video lead median/min ms", "sessions (resumed)"],
        [[f"{row['start_s'] / 60:.1f}-{row['end_s'] / 60:.1f} min",
          *[row["rss_mib"].get(label, "-") for label in labels],
          f"{row['frames_received']} ({row['frames_due']})",
          f"{row['video_lead_median_ms']}/{row['video_lead_min_ms']}",
          f"{row['sessions_opened']} ({row['sessions_resumed']})"] for row in report["windows"]]))
    growth = ", ".join(f"{label} {mib:+.1f} MiB" for label, mib in report["rss_growth_mib"].items())
    print(f"RSS from the second window to the last: {growth or 'needs 3 windows or more'}")
    slope = ", ".join(f"{label} {mib:+.2f}" for label, mib in report["rss_slope_mib_per_min"].items())
    print(f"RSS trend, MiB per minute (least squares from the second window): {slope or 'needs 3 windows or more'}")
    print(f"frames missing (dropped by the server): {report['frames_missing']}")


def command_soak(args: argparse.Namespace) -> int:
    if not sys.platform.startswith("linux"):
        raise CliError("soak reads the processes' memory from /proc: it runs on Linux only")
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    seconds = args.minutes * 60.0
    host = "127.0.0.1"
    port = free_port(host)
    with tempfile.TemporaryDirectory(prefix="avatar-soak-") as scratch:
        serve_args = ["--host", host, "--port", str(port), "--data-dir", str(Path(scratch) / "data"),
                      "--config", args.config, "--device", args.device]
        if args.weights is not None:
            serve_args += ["--weights", str(args.weights)]
        server = ServerProcess(serve_args, verbose=args.verbose)
        try:
            asyncio.run(wait_for_server(f"{host}:{port}", server, SERVER_START_TIMEOUT_S))
            model = asyncio.run(_model_info(f"{host}:{port}"))
            fps = float(model.default_fps)
            print(f"{args.npcs} NPC(s) talking for {args.minutes:g} min, sessions of {args.session_seconds:g} s",
                  flush=True)
            log = asyncio.run(soak(f"{host}:{port}", server.process.pid, args.npcs, seconds, args.session_seconds))
        finally:
            server.stop()
    windows = windows_of(log, seconds, args.window_seconds, args.npcs, fps)
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "config": args.config, "device": args.device, "weights_sha256": model.weights_sha256,
              "random_weights": model.random_weights, "npcs": args.npcs, "minutes": args.minutes,
              "session_seconds": args.session_seconds, "window_seconds": args.window_seconds, "fps": fps,
              "windows": windows, "rss_growth_mib": growth_of(windows),
              "rss_slope_mib_per_min": slope_of(windows), "frames_missing": log.frames_missing}
    print_report(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {display_path(args.json)}")
    return 0 if log.frames else 1


async def _model_info(target: str) -> avatar_service_pb2.ModelInfo:
    async with AvatarClient(target) as client:
        return (await client.server_info()).model


def add_soak_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the NPCs talk (default 60)")
    parser.add_argument("--npcs", type=parse_positive_int, default=3, help="NPCs talking at once (default 3)")
    parser.add_argument("--session-seconds", type=float, default=120.0,
                        help="each session ends after this long and the NPC resumes in a new one (default 120)")
    parser.add_argument("--window-seconds", type=float, default=60.0, help="report window (default 60)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the report to this JSON file")
    parser.add_argument("--verbose", action="store_true", help="show the server's log")
