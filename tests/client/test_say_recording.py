"""`say` against the real server (the gateway in front of the real worker engine with the tests' stand-in
generator, conftest.py), and the MP4 recorder on its own."""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest
import simplejpeg

from avatar_backend.cli import say as say_command
from avatar_backend.client import AvatarError, Mp4Recorder, SyncAvatarClient
from avatar_backend.client.meters import UtteranceWatch
from avatar_backend.media.audio_file import AudioFileError, load_audio
from avatar_backend.proto_gen import converse_pb2

RATE = 48000


def speech_like(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    return (8000 * envelope * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


def open_mp4(path) -> tuple[int, av.audio.stream.AudioStream | None, float]:
    with av.open(str(path)) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_seconds = float(audio.duration * audio.time_base) if audio and audio.duration else 0.0
        frames = sum(1 for _ in container.decode(video=0))
        return frames, audio, audio_seconds


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "realtime"])
def test_say_records_the_whole_utterance(registered, tmp_path, fast):
    out = tmp_path / "npc.mp4"
    pcm = speech_like(0.75)  # shorter than a block: its video is made once its end of utterance arrives
    options = say_command.SayOptions(server=registered.target, out=out, fast=fast, timeout_s=20)
    report = asyncio.run(say_command.say(pcm, options))

    # Blocks of 21 frames, then 32: voice sent at real-time pace waits for its end while the NPC idles.
    frames_received = report.frames_received
    assert frames_received >= 21 and (frames_received - 21) % 32 == 0
    assert report.frames_written == frames_received
    assert report.utterance_complete and not report.timed_out
    assert report.packets_sent == 38 and report.realtime is (not fast)
    assert report.av_offsets_ms and max(abs(o) for o in report.av_offsets_ms) == 0
    assert report.missing_frame_indices == 0 and report.frames_dropped == 0
    assert report.generated_fps is not None and report.generated_fps > 0
    assert report.model == "tiny (random weights)" and (report.width, report.height, report.fps) == (64, 64, 20)
    assert report.time_to_first_frame_s is not None and report.first_speaking_frame_s is not None
    if not fast:
        assert report.wall_seconds >= 0.6  # frames followed the real-time voice
    # say received every frame the NPC made, and the server saved the NPC when the stream ended.
    with SyncAvatarClient(registered.target) as client:
        npc = client.get_npc("cli-npc")
    assert not npc.live and npc.frames_generated == frames_received

    frames, audio, audio_seconds = open_mp4(out)
    assert frames == frames_received
    assert audio is not None and audio.codec_context.name == "aac"
    # Each block's echo covers its frames.
    assert audio_seconds == pytest.approx(frames_received / 20, abs=0.1)


def test_say_stops_at_its_timeout(registered, tmp_path, capsys):
    # Each generator call takes longer than say waits, so no frame arrives in time.
    registered.generator.block_delay_s = 1.0
    out = tmp_path / "npc.mp4"
    options = say_command.SayOptions(server=registered.target, out=out, npc_id="npc-slow", fast=True, timeout_s=0.5)
    report = asyncio.run(say_command.say(speech_like(0.2), options, log=lambda _: None))
    assert report.timed_out and report.frames_received == 0 and report.frames_written == 0
    say_command.print_say_report(report, out)
    text = capsys.readouterr().out
    assert "stopped waiting at the timeout" in text and "none written" in text


def test_say_reports_a_stream_error(registered, tmp_path):
    # The worker dies while it makes the utterance's block (slowly): say has sent everything and waits for frames.
    registered.generator.block_delay_s = 0.5

    def utterance_ended() -> bool:
        session = registered.worker_session("npc-crash")
        return session is not None and bool(session.utterance_ends)

    killed = registered.kill_worker("test", when=utterance_ended)
    options = say_command.SayOptions(
        server=registered.target, out=tmp_path / "npc.mp4", npc_id="npc-crash", fast=True
    )
    with pytest.raises(AvatarError) as caught:
        asyncio.run(say_command.say(speech_like(0.2), options))
    killed.result(5)
    assert caught.value.code_name == "UNAVAILABLE" and caught.value.retry_after_ms == 1000
    assert caught.value.details == "generator worker stopped: test; it is being restarted, retry"


def test_print_say_report(registered, tmp_path, capsys):
    out = tmp_path / "npc.mp4"
    report = asyncio.run(say_command.say(speech_like(0.3), say_command.SayOptions(server=registered.target, out=out, fast=True)))
    say_command.print_say_report(report, out)
    text = capsys.readouterr().out
    for label in ("frames received:", "first frame:", "A/V offset:", "dropped frames:", "video:"):
        assert label in text
    assert "faster than real time, as TTS" in text
    assert "voice gaps:       none" in text
    report.voice_gaps_ms = [400, 250]
    say_command.print_say_report(report, out)
    assert "voice gaps:       2 (650 ms of silence inside the utterance" in capsys.readouterr().out


def test_say_times_emotions_and_actions_on_its_voice(registered, tmp_path, capsys):
    out = tmp_path / "npc.mp4"
    control = say_command.VoiceControl
    controls = [control("emotion", "happy", 0.5, 2.8), control("action", "wave", 1.0, 1.3), control("emotion", "bored")]
    options = say_command.SayOptions(server=registered.target, out=out, fast=True, timeout_s=20, controls=controls,
                                     prompt_guidance=3.0)
    report = asyncio.run(say_command.say(speech_like(4.0), options))
    # The voice was all sent at once, yet each event shows in the block nearest its point: block 0 holds
    # [0, 1.05 s) of the voice, block 1 [1.05, 2.65), block 2 [2.65, 4.25).
    assert registered.generator.prompts[:3] == [None, "waving", "smiling"]
    assert registered.generator.intensities[2] == pytest.approx(0.5)
    assert set(registered.generator.prompt_guidances) == {3.0}, "the session's prompt guidance, on every block"
    say_command.print_say_report(report, out)
    text = capsys.readouterr().out
    assert ("controls sent:    emotion happy 0.5 at 2.8 s; action wave at 1.3 s; emotion bored from the start "
            "(prompt guidance 3)") in text
    assert "UNKNOWN_EMOTION: emotion 'bored' is not one of the character's emotions" in text


def frame(index: int, pts: int, value: int) -> converse_pb2.VideoFrame:
    image = np.full((32, 48, 3), value, dtype=np.uint8)
    return converse_pb2.VideoFrame(
        index=index, pts=pts, codec=converse_pb2.VIDEO_CODEC_JPEG, width=48, height=32, keyframe=True,
        data=simplejpeg.encode_jpeg(image, quality=95, colorspace="RGB"),
    )


@pytest.mark.parametrize("encoder", [None, "mpeg4"])
def test_recorder_places_frames_by_pts_and_fills_audio_gaps(tmp_path, encoder):
    path = tmp_path / "r.mp4"
    recorder = Mp4Recorder(path, session_sample_rate=RATE, fps=20, width=48, height=32, video_encoder=encoder)
    # 0.1 s of echo, a 0.1 s gap, then 0.1 s more: the track is 0.3 s long.
    recorder.add(converse_pb2.AudioEcho(start=0, sample_rate=16000, pcm16=np.ones(1600, "<i2").tobytes()))
    recorder.add(converse_pb2.AudioEcho(start=9600, sample_rate=16000, pcm16=np.ones(1600, "<i2").tobytes()))
    for i in range(6):
        recorder.add(frame(i, i * 2400, 40 * i))
    recorder.add(frame(5, 5 * 2400, 0))  # a repeat of pts 5 is skipped
    recorder.add(frame(7, 8 * 2400, 250))  # a missing frame leaves a gap in pts
    recorder.add(converse_pb2.SessionStats())  # ignored
    summary = recorder.close()

    assert summary.frames_written == 7 and summary.frames_skipped == 1
    assert summary.audio_seconds == pytest.approx(0.3)
    assert summary.video_seconds == pytest.approx(0.45)
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        pictures = list(container.decode(video=0))
    assert len(pictures) == 7
    assert (video.codec_context.width, video.codec_context.height) == (48, 32)
    times = [round(float(p.pts * p.time_base), 3) for p in pictures]
    assert times == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.4]
    assert abs(int(pictures[3].to_ndarray(format="rgb24").mean()) - 120) < 6


def test_recorder_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even size"):
        Mp4Recorder(tmp_path / "x.mp4", session_sample_rate=RATE, fps=20, width=33, height=32)


def test_utterance_watch_prefers_the_reported_end():
    watch = UtteranceWatch(samples_per_frame=2400)
    speaking = converse_pb2.VideoFrame(pts=4800, speaking=True)
    watch.frame(converse_pb2.VideoFrame(pts=0))
    watch.frame(converse_pb2.VideoFrame(pts=2400))
    watch.frame(speaking)
    watch.end_sent(9600)
    assert watch.utterance_end == 4800 + 9600 and not watch.done
    watch.utterance_complete({"timeline_end": "12000.0"})
    assert watch.utterance_end == 12000 and not watch.done
    watch.frame(converse_pb2.VideoFrame(pts=9600, speaking=True))
    assert watch.done


def test_load_audio_resamples_any_file_to_48k_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=22050, layout="stereo")
        samples = np.zeros((1, 22050 * 2), dtype=np.int16)
        chunk = av.AudioFrame.from_ndarray(samples, format="s16", layout="stereo")
        chunk.sample_rate = 22050
        for packet in stream.encode(chunk):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    pcm = load_audio(path, 48000)
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert abs(pcm.size - RATE) < 100
    with pytest.raises(AudioFileError, match="not found"):
        load_audio(tmp_path / "missing.wav", 48000)
