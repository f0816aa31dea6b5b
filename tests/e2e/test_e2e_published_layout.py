"""`avatar-backend serve --config <json> --weights <directory>` over real gRPC with a toy model of the published
architecture (wav2vec2, CLIP, umT5 through transformers; a sharded DiT; Wan2.1_VAE.pth), its files written in
the published layout and names: the server says which weights it loaded, and speech becomes frames."""

from __future__ import annotations

import pytest
import simplejpeg
from e2e_helpers import ASSETS, FPS, RATE, Server, collect, events_of, frames_of, run
from published_files import TOY_PUBLISHED, write_toy_published

from avatar_backend.client import AvatarClient
from avatar_backend.proto_gen import converse_pb2

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
pytest.importorskip("transformers")

SIZE = TOY_PUBLISHED.width


def test_serve_loads_a_weights_directory_and_talks(tmp_path, speech):
    weights = write_toy_published(tmp_path / "liveact")
    config = tmp_path / "published-toy.json"
    config.write_text(TOY_PUBLISHED.to_json())
    server = Server(tmp_path / "data", "--config", str(config), "--weights", str(weights)).start()
    try:
        async def scenario():
            async with AvatarClient(server.address) as client:
                info = await client.server_info()
                assert info.model.name == "published-toy" and not info.model.random_weights
                assert len(info.model.weights_sha256) == 64
                await client.register_character("smith", (ASSETS / "default_character.png").read_bytes(),
                                                "a blacksmith talking")
                async with client.converse("smith-1", "smith", width=SIZE, height=SIZE, fps=FPS,
                                           sample_rate=RATE) as conv:
                    await conv.send_audio_pcm(speech)
                    await conv.end_utterance()
                    items = await collect(
                        conv, lambda it: bool(events_of(it, converse_pb2.EVENT_CODE_UTTERANCE_COMPLETE)))
                    return frames_of(items), conv.voice_samples_sent

        frames, _ = run(scenario())
        assert len(frames) >= 21 and sum(f.speaking for f in frames) > 0
        assert all(simplejpeg.decode_jpeg(f.data).shape == (SIZE, SIZE, 3) for f in frames)
    finally:
        assert server.stop() == 0, "".join(server.output[-40:])
