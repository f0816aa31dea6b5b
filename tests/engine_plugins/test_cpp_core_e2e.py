"""The engine plugins' native client core (engine_plugins/cpp) end to end: its avatar_say sample streams real
speech through the C ABI to `avatar-backend serve` at real-time pace, and the frames, the echoed voice, an
interrupt and a resume after the server restarts are checked from what the sample wrote.

The core is built by `./buildall.sh test` (or `./buildall.sh cpp`) before pytest runs; a missing build is made
here. Without the C++ toolchain or its libraries the tests skip, except in CI where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_helpers import Server  # noqa: E402

from avatar_backend.cli.demo import free_port  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CPP_DIR = REPO / "engine_plugins" / "cpp"
BUILD_DIR = Path(os.environ.get("CPP_BUILD", CPP_DIR / "build"))
if not BUILD_DIR.is_absolute():
    BUILD_DIR = REPO / BUILD_DIR
SIZE = 64  # the tiny model's smallest size: keeps CI's CPU time down
FPS = 20
RATE = 48000
SAMPLES_PER_FRAME = RATE // FPS
# About 7 s of speech: long enough to interrupt the NPC while it is talking.
SPEECH = ("Welcome, traveller. The forge is hot and the iron is ready. "
          "Bring me the ore from the northern mine and I will make you a sword.")


def unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def avatar_say() -> Path:
    """The sample's binary, built here (Release, -j2) when ./buildall.sh has not built it."""
    binary = BUILD_DIR / "avatar_say"
    if not binary.exists():
        if shutil.which("cmake") is None:
            unavailable("cmake is not installed")
        configure = subprocess.run(["cmake", "-S", str(CPP_DIR), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release"],
                                   capture_output=True, text=True)
        if configure.returncode != 0:
            unavailable("engine_plugins/cpp does not configure (run ./buildall.sh cpp):\n" + configure.stderr[-2000:])
        subprocess.run(["cmake", "--build", str(BUILD_DIR), "-j2", "--target", "avatar_say"], check=True)
    return binary


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), SPEECH], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("data"), port=free_port()).start()
    yield srv
    srv.stop()


def say_command(binary: Path, target: str, wav: Path, out: Path, npc: str, *extra: str) -> list[str]:
    return [str(binary), "--target", target, "--wav", str(wav), "--out", str(out), "--npc", npc,
            "--size", str(SIZE), "--fps", str(FPS), "--timeout-s", "150", *extra]


def summary_of(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("summary ")]
    assert lines, f"the sample printed no summary:\n{stdout[-3000:]}"
    return json.loads(lines[-1][len("summary "):])


def shown_frames(out: Path) -> list[tuple[int, ...]]:
    """(index, pts, speaking, playhead, interrupt_phase) of every frame the sample showed, in order; the phase
    is 0 before an interrupt was sent, 1 while its ack was awaited, 2 after it."""
    rows = (out / "frames.tsv").read_text().splitlines()[1:]
    return [tuple(int(v) for v in row.split("\t")) for row in rows]


def read_ppm(path: Path) -> np.ndarray:
    data = path.read_bytes()
    match = re.match(rb"P6\n(\d+) (\d+)\n255\n", data)
    assert match, f"{path.name} is not a binary PPM"
    width, height = int(match.group(1)), int(match.group(2))
    pixels = np.frombuffer(data[match.end():], dtype=np.uint8)
    assert pixels.size == width * height * 3, f"{path.name}: {pixels.size} bytes for {width}x{height}"
    return pixels.reshape(height, width, 3)


def read_wav_48k(path: Path) -> np.ndarray:
    """A WAV as float mono at 48 kHz (espeak-ng writes 22050 Hz; the sample resamples the same way)."""
    with wave.open(str(path)) as wav:
        rate, channels = wav.getframerate(), wav.getnchannels()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64)
    pcm = pcm.reshape(-1, channels).mean(axis=1)
    if rate != RATE:
        pcm = np.interp(np.arange(int(pcm.size * RATE / rate)) * rate / RATE, np.arange(pcm.size), pcm)
    return pcm


def best_alignment(track: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """Where ``reference`` sits in ``track`` and the normalised correlation there."""
    n = 1 << int(np.ceil(np.log2(track.size + reference.size)))
    corr = np.fft.irfft(np.fft.rfft(track, n) * np.conj(np.fft.rfft(reference, n)), n)[: track.size - reference.size]
    lag = int(np.argmax(corr))
    segment = track[lag: lag + reference.size]
    return lag, float(corr[lag] / (np.linalg.norm(segment) * np.linalg.norm(reference) + 1e-9))


def test_speech_streams_through_the_c_abi_and_frames_follow_the_echoed_voice(avatar_say, server, speech_wav,
                                                                            tmp_path):
    out = tmp_path / "say"
    run = subprocess.run(say_command(avatar_say, server.address, speech_wav, out, "cpp-say"),
                         capture_output=True, text=True, timeout=240)
    summary = summary_of(run.stdout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert summary["ended_code"] == 0 and summary["resume_token"], summary
    assert summary["first_frame_latency_ms"] > 0, summary
    assert summary["echo_discontinuities"] == 0, "the echoed audio has gaps or overlaps"
    frames = shown_frames(out)
    assert len(frames) >= 100 and len(frames) == summary["frames_shown"], summary
    indices = [f[0] for f in frames]
    pts = [f[1] for f in frames]
    assert all(b > a for a, b in zip(indices, indices[1:])), "frames out of order"
    assert all(b - a == (j - i) * SAMPLES_PER_FRAME for (i, a), (j, b) in zip(zip(indices, pts),
                                                                       zip(indices[1:], pts[1:]))), "pts off the clock"
    # A frame the clock overtook (the player's loop stalled longer than a frame) is skipped and counted; on an
    # idle machine none is. Every frame not shown is accounted for.
    assert len(frames) + summary["frames_dropped"] == indices[-1] - indices[0] + 1, summary
    assert summary["frames_dropped"] <= len(frames) // 10, summary
    assert any(f[2] for f in frames), "no frame was speaking"
    # Each frame was shown once the audio clock reached its pts, never before, and typically within a poll.
    lateness = np.array([playhead - p for _, p, _, playhead, _ in frames])
    assert lateness.min() >= 0, "a frame was shown before its time"
    assert np.median(lateness) < RATE // 50, f"median A/V offset {np.median(lateness) / RATE * 1000:.0f} ms"
    # Frames decode to real pictures of the session's size.
    for index in indices[:: max(1, len(indices) // 8)]:
        picture = read_ppm(out / f"frame_{index:08d}.ppm")
        assert picture.shape == (SIZE, SIZE, 3)
        assert picture.std() > 1.0, f"frame {index} is flat"
    # The echoed voice, converted to 48 kHz on the clock, is the speech that was sent, gapless.
    echo = read_wav_48k(out / "echo.wav")
    speech = read_wav_48k(speech_wav)
    voiced = speech[np.argmax(np.abs(speech) > 500):]
    voiced = voiced[: int(np.nonzero(np.abs(voiced) > 500)[0][-1]) + 1]
    lag, correlation = best_alignment(echo, voiced)
    assert correlation > 0.8, f"the echo does not contain the speech (correlation {correlation:.2f})"
    speaking_pts = [f[1] for f in frames if f[2]]
    assert speaking_pts[0] - SAMPLES_PER_FRAME * 2 <= lag <= speaking_pts[-1], (lag, speaking_pts[:3])


def test_interrupt_replaces_the_unheard_frames_with_the_acknowledged_video(avatar_say, server, speech_wav, tmp_path):
    out = tmp_path / "interrupt"
    run = subprocess.run(say_command(avatar_say, server.address, speech_wav, out, "cpp-interrupt",
                                     "--interrupt-after-s", "6"),
                         capture_output=True, text=True, timeout=240)
    summary = summary_of(run.stdout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ack = summary["interrupt_ack"]
    assert ack is not None, run.stdout[-3000:]
    assert summary["echo_discontinuities"] == 0, "the echo did not continue exactly at the replace point"
    assert ack["replace_from_pts"] % SAMPLES_PER_FRAME == 0
    frames = shown_frames(out)
    played_until = int(re.search(r"interrupt sent played_until=(\d+)", run.stdout).group(1))
    assert ack["replace_from_pts"] - SAMPLES_PER_FRAME < played_until <= ack["replace_from_pts"], (ack, played_until)
    # What was shown before the interrupt had been heard; once it was sent, nothing that the ack replaces
    # (index < next_frame_index, pts >= replace_from_pts) was shown.
    assert all(f[1] <= played_until for f in frames if f[4] == 0)
    replaced = [f for f in frames if f[4] > 0 and f[0] < ack["next_frame_index"] and f[1] >= ack["replace_from_pts"]]
    assert not replaced, replaced
    # The new video starts at the replace point and follows the clock from there: every new frame's pts is the
    # replace point plus its place after next_frame_index. A loaded machine may show the first new frame late;
    # the queue then skips it for the next one due, and counts the skipped frames as dropped.
    after = [f for f in frames if f[0] >= ack["next_frame_index"]]
    assert len(after) >= 5 and all(f[4] == 2 for f in after)
    on_the_clock = [ack["replace_from_pts"] + (f[0] - ack["next_frame_index"]) * SAMPLES_PER_FRAME for f in after]
    assert [f[1] for f in after] == on_the_clock, (ack, after[:5])
    skipped = after[0][0] - ack["next_frame_index"]
    assert skipped < FPS // 2 and skipped <= summary["frames_dropped"], (ack, after[0], summary["frames_dropped"])
    pts = [f[1] for f in frames]
    assert pts == sorted(pts), "pts went backwards around the interrupt"
    # The echoed voice was cut at the replace point too: the track goes on with the new audio, silent after
    # its first frame (whose slice may still end the voice), not with the rest of the sentence that was
    # buffered (the session's echo starts at 0, where echo.wav starts).
    echo = read_wav_48k(out / "echo.wav")
    start = ack["replace_from_pts"] + SAMPLES_PER_FRAME
    new_audio = echo[start: start + RATE // 2]
    assert new_audio.size == RATE // 2 and np.abs(new_audio).max() < 100, "the replaced voice was played"


def test_the_session_resumes_the_npc_after_the_server_restarts(avatar_say, speech_wav, tmp_path):
    srv = Server(tmp_path / "data", port=free_port()).start()
    out = tmp_path / "resume"
    sample = subprocess.Popen(say_command(avatar_say, srv.address, speech_wav, out, "cpp-resume", "--wait-reconnect"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(sample.stdout), daemon=True)
    reader.start()
    restarted = None
    try:
        # Let the NPC talk (its memory then has blocks), then stop the server and start it again on the
        # same port and data: the client must reopen the stream itself, with the NPC's resume token.
        deadline = time.monotonic() + 120
        while not any(line.startswith("server event 6 ") for line in lines):
            assert time.monotonic() < deadline and sample.poll() is None, "".join(lines)
            time.sleep(0.2)
        assert srv.stop() == 0, "".join(srv.output[-40:])
        restarted = Server(srv.data_dir, port=srv.port).start()
        sample.wait(240)
        reader.join(10)
    finally:
        if sample.poll() is None:
            sample.kill()
        if restarted is not None:
            restarted.stop()
    stdout = "".join(lines)
    summary = summary_of(stdout)
    assert sample.returncode == 0, stdout[-3000:]
    states = [line.split()[1] for line in lines if line.startswith("state ")]
    assert states[:2] == ["opening", "live"] and "reconnecting" in states and states[-1] == "live", states
    assert summary["reconnects"] >= 1 and summary["frames_after_reconnect"] >= 5, summary
    # The resumed NPC continues its life: the new stream's first frame index follows the old stream's frames.
    start_indices = [int(m.group(1)) for m in re.finditer(r"state live start_frame_index=(\d+)", stdout)]
    assert len(start_indices) >= 2 and start_indices[-1] > 0, start_indices
    frames = shown_frames(out)
    assert [f[0] for f in frames] == sorted({f[0] for f in frames}), "frame indices went backwards on resume"
    assert [f[1] for f in frames] == sorted({f[1] for f in frames}), "the clock went backwards on resume"
    assert summary["ended_code"] == 0 and summary["resume_token"], summary
    assert summary["echo_discontinuities"] == 0, "the echoed audio is not gapless across the reconnect"


def test_a_refused_session_reports_the_status_code_and_the_servers_message(avatar_say, server, speech_wav, tmp_path):
    command = say_command(avatar_say, server.address, speech_wav, tmp_path / "refused", "cpp-refused")
    command[command.index("--size") + 1] = "63"  # not one of the served sizes
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    summary = summary_of(run.stdout)
    assert run.returncode == 1, run.stdout
    assert summary["ended_code"] == 3, summary  # INVALID_ARGUMENT
    assert summary["ended_message"].startswith("INVALID_ARGUMENT: ") and "video.width" in summary["ended_message"]
    assert summary["frames_received"] == 0
