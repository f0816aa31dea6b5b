"""TLS end to end: `avatar-backend serve` with a certificate and an API key file, the real tiny generator, and
the package's clients (the CLI and AvatarClient) trusting the test CA over real gRPC."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import simplejpeg

from avatar_backend import cli
from avatar_backend.client import AvatarClient, AvatarError
from avatar_backend.proto_gen import converse_pb2

from e2e_helpers import RATE, SIZE, Server
from tls_certificates import TlsMaterial, make_tls_material

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

API_KEY = "e2e-tls-key"


@dataclass
class TlsServer:
    server: Server
    certs: TlsMaterial
    key_file: Path

    @property
    def port(self) -> int:
        return int(self.server.address.rsplit(":", 1)[1])

    @property
    def serving_line(self) -> str:
        return next(line.strip() for line in self.server.output if "serving on" in line)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """`avatar-backend serve` with TLS and an API key file, the real worker behind it."""
    folder = tmp_path_factory.mktemp("tls-serve")
    certs = make_tls_material(folder / "tls")
    key_file = folder / "api-key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    server = Server(folder / "data", "--api-key-file", str(key_file),
                    "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)).start()
    yield TlsServer(server, certs, key_file)
    assert server.stop() == 0, "".join(server.output[-40:])


def test_serve_announces_tls_and_the_cli_connects_with_the_ca(tls_server, capsys, monkeypatch):
    assert tls_server.serving_line.endswith("(TLS, API key)"), tls_server.serving_line
    monkeypatch.delenv(cli.API_KEY_ENV, raising=False)
    status = cli.main(["info", "--server", f"grpcs://localhost:{tls_server.port}",
                       "--tls-ca", str(tls_server.certs.ca_cert), "--api-key-file", str(tls_server.key_file)])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "cpu (ready)" in out and "tiny" in out


def test_a_conversation_over_tls_with_the_real_worker(tls_server):
    target = f"grpcs://127.0.0.1:{tls_server.port}"
    ca = tls_server.certs.ca_cert
    voice = (np.sin(np.arange(RATE) * 2 * np.pi * 220 / RATE) * 8000).astype(np.int16)

    async def scenario() -> converse_pb2.VideoFrame:
        async with AvatarClient(target, root_certificates=ca) as client:
            with pytest.raises(AvatarError) as refused:
                await client.list_npcs()
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
        async with AvatarClient(target, root_certificates=ca, api_key=API_KEY) as client:
            async with client.converse("tls-npc", "default", width=SIZE, height=SIZE, sample_rate=RATE) as conv:
                await conv.send_audio_pcm(voice)
                await conv.end_utterance()
                while True:
                    item = await conv.next_item(timeout=300)
                    assert item is not None, "the stream ended before a frame"
                    if isinstance(item, converse_pb2.VideoFrame):
                        await conv.cancel()
                        return item

    frame = asyncio.run(asyncio.wait_for(scenario(), 600))
    assert frame.codec == converse_pb2.VIDEO_CODEC_JPEG
    assert simplejpeg.decode_jpeg(frame.data).shape == (SIZE, SIZE, 3)
