"""``avatar-backend demo``: start a server on a free port, make the default NPC talk, write the MP4."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from avatar_backend.client import AvatarClient, AvatarError

from .common import API_KEY_ENV, CliError, display_path
from .say import print_say_report, say, say_options_from_args, speech_for

#: How long `demo` waits for its server to load the model and start the worker.
SERVER_START_TIMEOUT_S = 300.0


def free_port(host: str = "127.0.0.1") -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`avatar-backend serve` as a child process, its output kept (and shown with ``verbose``)."""

    def __init__(self, serve_args: list[str], verbose: bool) -> None:
        self.verbose = verbose
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "avatar_backend.cli", "serve", *serve_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            # Its own process group: Ctrl-C reaches only the demo, which then stops the server once, cleanly.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read_output, name="serve-output", daemon=True)
        self._reader.start()

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self.tail.append(line)
            if line.startswith("avatar-backend "):
                # The server's own announcements (listening, serving, model): always worth showing.
                print(line, flush=True)
            elif self.verbose:
                print(f"  server | {line}", file=sys.stderr, flush=True)

    def output_tail(self) -> str:
        return "\n".join(f"  server | {line}" for line in self.tail)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the server to drain and stop (SIGINT, as Ctrl-C); kill it if it does not."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)


async def wait_for_server(target: str, server: ServerProcess, timeout: float) -> None:
    """Until the server answers and its worker is ready; CliError when the process exits first."""
    deadline = time.monotonic() + timeout
    # The child server inherits $AVATAR_API_KEY and then requires it.
    async with AvatarClient(target, api_key=os.environ.get(API_KEY_ENV) or None) as client:
        while True:
            if server.process.poll() is not None:
                raise CliError(
                    f"the server exited with status {server.process.returncode}:\n{server.output_tail()}"
                )
            if time.monotonic() > deadline:
                raise CliError(f"the server did not become ready within {timeout:.0f} s:\n{server.output_tail()}")
            try:
                await client.wait_ready(timeout=1.0)
                info = await client.server_info()
                if info.worker_ready:
                    return
            except AvatarError:
                pass
            await asyncio.sleep(0.5)


def command_demo(args: argparse.Namespace) -> int:
    # A SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so the server child is stopped too.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    host = "127.0.0.1"
    port = free_port(host)
    with tempfile.TemporaryDirectory(prefix="avatar-demo-") as scratch:
        scratch_dir = Path(scratch)
        pcm = speech_for(args, scratch_dir)
        data_dir = args.data_dir or scratch_dir / "data"
        serve_args = ["--host", host, "--port", str(port), "--data-dir", str(data_dir),
                      "--config", args.config, "--device", args.device]
        if args.weights is not None:
            serve_args += ["--weights", str(args.weights)]
        print(f"starting avatar-backend serve on {host}:{port} (data {display_path(Path(data_dir))})", flush=True)
        started = time.monotonic()
        server = ServerProcess(serve_args, verbose=args.verbose)
        try:
            asyncio.run(wait_for_server(f"{host}:{port}", server, SERVER_START_TIMEOUT_S))
            print(f"server ready after {time.monotonic() - started:.1f} s; NPC {args.npc} is talking...", flush=True)
            report = asyncio.run(say(pcm, say_options_from_args(args, f"{host}:{port}")))
        except AvatarError:
            if not args.verbose:
                print(f"the server's last output:\n{server.output_tail()}", file=sys.stderr)
            raise
        finally:
            server.stop()
    print_say_report(report, args.out)
    if report.frames_written:
        print(f"wrote {args.out.resolve()}")
    return 0 if report.frames_received else 1
