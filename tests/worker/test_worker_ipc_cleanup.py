"""ipc endpoint folders of killed gateways are removed when the next gateway starts; a live one's never."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from avatar_backend.worker.link import GatewayLink, remove_stale_ipc_dirs

# A gateway's link that binds its default ipc endpoint, says where, and runs until killed.
_GATEWAY = """
import asyncio
from avatar_backend.worker.link import GatewayLink

async def main():
    link = await GatewayLink().start()
    print(link.endpoint, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


@pytest.fixture
def temp_root(monkeypatch):
    """A short private temp dir standing in for /tmp (ipc paths must stay under ~100 characters)."""
    root = tempfile.mkdtemp(prefix="ipct-")
    monkeypatch.setattr(tempfile, "tempdir", root)
    yield Path(root)
    shutil.rmtree(root, ignore_errors=True)


def start_gateway(temp_root: Path) -> tuple[subprocess.Popen, Path]:
    env = {**os.environ, "TMPDIR": str(temp_root)}
    proc = subprocess.Popen([sys.executable, "-c", _GATEWAY], stdout=subprocess.PIPE, text=True, env=env)
    endpoint = proc.stdout.readline().strip()
    assert endpoint.startswith("ipc://"), endpoint
    return proc, Path(endpoint[len("ipc://"):]).parent


def test_a_killed_gateways_ipc_folder_is_removed_by_the_next_one_and_a_live_ones_kept(temp_root):
    killed, killed_dir = start_gateway(temp_root)
    live, live_dir = start_gateway(temp_root)
    try:
        killed.kill()                              # SIGKILL: its link never closes
        killed.wait()
        assert killed_dir.is_dir() and (killed_dir / "worker.sock").exists()

        async def next_gateway() -> Path:
            async with GatewayLink() as link:
                own = Path(link.endpoint[len("ipc://"):]).parent
                assert own.is_dir()
                return own

        own = asyncio.run(next_gateway())
        assert not killed_dir.exists()
        assert live_dir.is_dir() and (live_dir / "worker.sock").exists()
        assert not own.exists()                    # a clean close removes its own folder as before
        assert sorted(p.name for p in temp_root.iterdir()) == [live_dir.name]
    finally:
        live.kill()
        live.wait()


def test_a_folder_whose_socket_is_live_or_holds_more_than_a_socket_is_kept(temp_root):
    # Older builds named the folder avatar-XXXXXXXX (no pid): only a socket nobody listens on marks it abandoned.
    abandoned = temp_root / "avatar-abcd1234"
    abandoned.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(abandoned / "worker.sock"))
    dead.close()                                   # the socket file stays, with no listener

    listening = temp_root / "avatar-efgh5678"
    listening.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(listening / "worker.sock"))
    server.listen(1)

    # A gateway whose pid this process cannot see (another pid namespace) but whose socket is live: kept.
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True,
                          text=True)
    unseen = temp_root / f"avatar-backend-ipc-{int(gone.stdout)}-abcdefgh"
    unseen.mkdir()
    unseen_server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unseen_server.bind(str(unseen / "worker.sock"))
    unseen_server.listen(1)

    someone_elses = temp_root / "avatar-ijkl9012"   # same name shape, other contents: not ours
    someone_elses.mkdir()
    (someone_elses / "notes.txt").write_text("keep")
    unrelated = temp_root / "avatar-backend-ipc-notapid-x"
    unrelated.mkdir()
    try:
        removed = remove_stale_ipc_dirs()
    finally:
        server.close()
        unseen_server.close()
    assert removed == [str(abandoned)]
    assert listening.is_dir() and unseen.is_dir() and someone_elses.is_dir() and unrelated.is_dir()
