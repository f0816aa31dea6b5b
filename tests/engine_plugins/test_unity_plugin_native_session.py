"""A conversation through the Unity package's C# and the real native core, against `avatar-backend serve`.

The session program (unity_core_tests/NativeSessionRun.cs) does what NpcAvatar does minus Unity: it pushes
real speech (espeak-ng) through VoiceChunker and the P/Invoke layer, plays the echoed voice out on the wall
clock with EchoPlayback and shows each frame when the A/V clock says it is due, then closes the session and
reads the NPC's resume token; against the real core a second, longer utterance is interrupted in between.
It runs twice: against the scripted core (always, so the program itself is known to work) and against the real
core (libavatar_client, built by `./buildall.sh cpp` under engine_plugins/cpp/build*, or named by
$AVATAR_CLIENT_LIBRARY), which is skipped only when that library has not been built.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from unity_plugin_build import (CORE_TESTS_DIR, NATIVE_LIBRARY_VARIABLE, CoreBuild, build_core, compile_c_library,
                                find_native_library)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_helpers import ASSETS, FPS, RATE, SENTENCE, Server, espeak, run  # noqa: E402

from avatar_backend.client import AvatarClient  # noqa: E402


@pytest.fixture(scope="module")
def core_build(tmp_path_factory) -> CoreBuild:
    return build_core(tmp_path_factory.mktemp("unity_session"))


@pytest.fixture(scope="module")
def speech_file(tmp_path_factory) -> tuple[Path, int]:
    """About 3 s of espeak-ng speech as raw int16 at 48 kHz, and its length in samples."""
    directory = tmp_path_factory.mktemp("speech")
    speech = espeak(SENTENCE, RATE, directory)
    path = directory / "speech.pcm"
    path.write_bytes(speech.astype("<i2").tobytes())
    return path, len(speech)


def voice_samples_sent_after(samples: int) -> int:
    """The voice count after one utterance of ``samples`` at 48 kHz: whole 20 ms packets, the last one padded
    past the encoder's look-ahead (312 samples)."""
    return -(-(samples + 312) // 960) * 960


def session_report(result) -> dict[str, str]:
    report = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key != "event":
            report[key] = value
    return report


def test_session_program_against_the_scripted_core(core_build, speech_file, tmp_path):
    library_dir = tmp_path / "scripted_core"
    library_dir.mkdir()
    compile_c_library(CORE_TESTS_DIR / "fake_avatar_client.c", library_dir / "libavatar_client.so")
    pcm, samples = speech_file
    result = core_build.run_tests("session", "scripted", "npc-1", "smith", str(pcm), "timeout=30",
                                  library_dir=library_dir)
    assert result.returncode == 0, result.stdout
    report = session_report(result)
    assert report["live"] == "1" and report["utterance_complete"] == "1", result.stdout
    # The scripted core makes one speaking frame per 1/25 s of voice, then two silent ones.
    assert int(report["speaking_frames_shown"]) >= 1 and report["silent_after_speech"] == "1", result.stdout
    assert report["frames_shown_before_due"] == "0" and report["frames_out_of_order"] == "0", result.stdout
    assert int(report["echoed_samples"]) >= samples, result.stdout
    assert int(report["voice_samples_sent"]) == voice_samples_sent_after(samples), result.stdout
    assert report["end_status"] == "0" and report["resume_token_length"] == str(len("resume-token-of-the-fake"))


@pytest.fixture(scope="module")
def native_library() -> Path:
    library = find_native_library()
    if library is None:
        pytest.skip("the native client core is not built: run ./buildall.sh cpp (it builds libavatar_client under "
                    f"engine_plugins/cpp/build*), or set {NATIVE_LIBRARY_VARIABLE} to the library's path")
    return library


@pytest.mark.e2e
@pytest.mark.slow
def test_speech_becomes_frames_through_the_real_native_core(native_library, core_build, speech_file,
                                                            tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("data")).start()
    try:
        async def register():
            async with AvatarClient(server.address) as client:
                await client.register_character("smith", (ASSETS / "default_character.png").read_bytes(),
                                                "a blacksmith talking")
        run(register())
        pcm, samples = speech_file
        result = core_build.run_tests("session", server.address, "unity-smith-1", "smith", str(pcm), "interrupt",
                                      library_dir=native_library.parent, timeout=500)
    finally:
        assert server.stop() == 0, "".join(server.output[-40:])
    assert result.returncode == 0, result.stdout
    report = session_report(result)
    assert report["abi_version"] == "1"
    assert report["live"] == "1", result.stdout
    assert report["push_result"] == "Ok" and report["end_utterance"] == "Ok", result.stdout
    assert int(report["voice_samples_sent"]) == voice_samples_sent_after(samples), result.stdout
    assert report["utterance_complete"] == "1", result.stdout
    assert report["frame_size"] == "64x64", result.stdout
    # The NPC talks for as long as the voice lasts (give or take a block of 32 frames, as tests/e2e does),
    # shown in order and never before the voice reaches each frame.
    duration_s = samples / RATE
    received = int(report["frames_received"])
    assert received >= duration_s * FPS, result.stdout
    assert int(report["speaking_frames_shown"]) >= 1 and report["silent_after_speech"] == "1", result.stdout
    assert report["frames_shown_before_due"] == "0" and report["frames_out_of_order"] == "0", result.stdout
    assert int(report["speaking_pixel_sum"]) > 0, "decoded speaking frames are not blank"
    assert int(report["echoed_samples"]) >= samples, "the echoed voice covers the speech"
    assert float(report["first_frame_latency_ms"]) > 0
    # The long second utterance (four times the speech), interrupted once its first speaking frame was shown:
    # the answer cuts where the player was (rounded up to a frame); the rest of the voice is gone, either never
    # generated (dropped) or generated and never heard (unheard: a fast server may have made all of it); the
    # video from there on is the NPC listening.
    assert report["interrupt"] == "Ok" and "interrupt_ack" in report, result.stdout
    next_frame_index, replace_from_pts, dropped_samples, unheard_samples = map(int, report["interrupt_ack"].split())
    heard = int(report["heard_at_interrupt"])
    frame_samples = RATE // FPS
    assert heard - frame_samples <= replace_from_pts <= heard + 4 * frame_samples, result.stdout
    # How much is cut depends on how far playback got before the first speaking frame was shown (the server may
    # have made the whole utterance by then); that something is cut, and nothing after it speaks, does not.
    assert dropped_samples + unheard_samples > 0, result.stdout
    assert report["speaking_frames_after_interrupt"] == "0", result.stdout
    assert int(report["silent_frames_after_interrupt"]) >= 1, result.stdout
    assert int(report["first_pts_after_interrupt"]) >= replace_from_pts, result.stdout
    # A normal close: the server saved the NPC and the core passed its resume token on.
    assert report["end_status"] == "0" and int(report["resume_token_length"]) > 0, result.stdout
    assert np.isfinite(float(report["first_speaking_frame_shown_s"]))
