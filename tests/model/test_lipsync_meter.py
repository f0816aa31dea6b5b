"""The client's lip-sync meter, on frames whose truth is known: the renderer's clip of a character saying real
speech scores high against its own voice and low against another voice, read from JPEG frames on the wire."""

import numpy as np
import pytest
import simplejpeg

from avatar_backend.client.meters import LipSyncMeter
from avatar_backend.proto_gen import converse_pb2
from model.data.identity import DEFAULT_IDENTITY
from model.data.render import render_clip
from model.data.speech import espeak_available, synthesize
from model.make_default_character import mouth_region

SESSION_RATE = 48000
FPS = 20


def wire(frames: np.ndarray, voice: np.ndarray) -> list:
    """The frames as JPEG VideoFrames on the session clock, and the voice as 16 kHz AudioEcho blocks."""
    items = []
    step = SESSION_RATE // FPS
    for start in range(0, len(voice), 16000):
        pcm = (np.clip(voice[start:start + 16000], -1, 1) * 32767).astype("<i2").tobytes()
        items.append(converse_pb2.AudioEcho(start=start * 3, sample_rate=16000, pcm16=pcm))
    for index, frame in enumerate(frames):
        items.append(converse_pb2.VideoFrame(index=index, pts=index * step, codec=converse_pb2.VIDEO_CODEC_JPEG,
                                             data=simplejpeg.encode_jpeg(frame, quality=85, colorspace="RGB")))
    return items


def score(items, size):
    meter = LipSyncMeter(tuple(mouth_region()), size, size, FPS, SESSION_RATE)
    for item in items:
        if isinstance(item, converse_pb2.VideoFrame):
            meter.frame(item, simplejpeg.decode_jpeg(item.data, colorspace="RGB"))
        else:
            meter.echo(item)
    return meter.score()


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_the_meter_scores_a_mouth_that_follows_the_voice_and_not_one_that_does_not():
    voice = np.concatenate([np.zeros(8000, np.float32), synthesize("Welcome, traveller. The forge is hot."),
                            np.zeros(8000, np.float32)])
    other = synthesize("No, absolutely not. Who goes there?", "fr-fr+f3")
    other = np.pad(other, (0, max(0, len(voice) - len(other))))[: len(voice)]
    clip = render_clip(0, voice, [], size=128, identity=DEFAULT_IDENTITY)
    own = score(wire(clip.frames, voice), 128)
    swapped = score(wire(clip.frames, other), 128)
    assert own.r >= 0.85, own
    assert swapped.r < 0.4, swapped
    assert own.opening_speaking > 2 * own.opening_silent
    assert score([], 128) is None
