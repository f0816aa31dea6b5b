"""The gateway process: gRPC server (AvatarService, health, reflection) in front of one worker process.

    run_server(ServerOptions(port=50051, data_dir=...))     # blocks until SIGINT/SIGTERM; returns 0

Start-up: refuse an unsafe configuration before anything is bound (a server on the network must
authenticate its clients, see :func:`~avatar_backend.gateway.auth.check_exposure`; unreadable TLS files),
check libopus, bind the port (TLS when a certificate is given; health NOT_SERVING), start the worker and wait
for it, then health SERVING and a "serving on HOST:PORT (security)" line on stdout.

Shutdown on SIGINT/SIGTERM: health NOT_SERVING, every live session gets EVENT_CODE_DRAINING and ends with
UNAVAILABLE, the worker saves every NPC memory and exits, and so does the gateway (a second signal skips the
waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from avatar_backend import __version__
from avatar_backend.addresses import bind_address
from avatar_backend.generator.config import ExecutionConfig
from avatar_backend.media.opus import OpusUnavailableError, check_opus_available
from avatar_backend.proto_gen import avatar_service_pb2, worker_pb2
from avatar_backend.store import DataDir, default_data_dir
from avatar_backend.worker.link import GatewayLink, WorkerRequestError, WorkerUnavailableError
from avatar_backend.worker.process import WorkerProcess, WorkerProcessConfig, WorkerStartError
from avatar_backend.worker.scheduler import DEFAULT_MAX_BATCH

from .auth import (ApiKeyInterceptor, ServerTls, TlsConfigError, UnsafeExposureError, check_exposure,
                   load_server_tls)
from .characters import ensure_default_character
from .limits import Limits
from .runtime import GatewayRuntime, SessionRegistry, WorkerLinkLike, WorkerStatus
from .service import AvatarService
from .wire import add_avatar_service

__all__ = ["Gateway", "ServerOptions", "StartupRefused", "check_startup", "run_server", "serve"]

log = logging.getLogger(__name__)

SERVICE_NAME = avatar_service_pb2.DESCRIPTOR.services_by_name["AvatarService"].full_name
WORKER_INFO_TIMEOUT_S = 5.0
WORKER_POLL_INTERVAL_S = 0.1


@dataclass
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 50051                      # 0: pick a free port (see Gateway.port / ready_callback)
    data_dir: Path | str | None = None     # None: the user's data directory
    model_config: str = "tiny"             # model config name or JSON file, passed to the worker
    device: str = "cpu"                    # cpu, cuda, cuda:N
    weights: Path | str | None = None      # a file or directory, "random", or None: the config's shipped weights
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)  # attention backend, FP8 GEMM, compile
    max_sessions: int = Limits.max_sessions
    max_message_bytes: int = Limits.max_message_bytes
    max_audio_packet_bytes: int = Limits.max_audio_packet_bytes
    max_prompt_chars: int = Limits.max_prompt_chars
    max_reference_image_bytes: int = Limits.max_reference_image_bytes
    outbound_queue_frames: int = Limits.outbound_queue_frames
    max_reference_image_pixels: int = Limits.max_reference_image_pixels
    max_stored_npcs: int = Limits.max_stored_npcs                  # 0: no cap (enforced by the worker)
    max_stored_npc_bytes: int = Limits.max_stored_npc_bytes        # 0: no cap (enforced by the worker)
    max_parked_memory_bytes: int = Limits.max_parked_memory_bytes  # host RAM for idle NPC memories
    npc_snapshot_interval_s: float = Limits.npc_snapshot_interval_s  # 0: live memories saved at session end only
    voice_jitter_budget_ms: int = Limits.voice_jitter_budget_ms    # an utterance's voice may stall this long
    max_timed_events: int = Limits.max_timed_events  # per session, waiting for their voice
    max_prompt_guidance: float | None = None  # a session's largest; None: 10 if the model guides by default, else 1
    max_batch: int = DEFAULT_MAX_BATCH     # NPCs whose blocks the worker generates in one call at most
    api_key: str | None = None             # when set, AvatarService calls need "authorization: Bearer <key>"
    tls_cert: Path | str | None = None     # PEM certificate chain; with tls_key the port speaks TLS only
    tls_key: Path | str | None = None      # PEM private key of tls_cert
    tls_client_ca: Path | str | None = None  # PEM CA: clients must present a certificate it signed (mTLS)
    # Listen beyond loopback with neither an API key nor client certificates (refused otherwise).
    insecure_no_auth_on_network: bool = False
    worker_endpoint: str | None = None     # ZeroMQ endpoint for the worker (None: ipc:// in a temp dir)
    encode_threads: int = 0                # 0: one per core, at most 8
    drain_timeout_s: float = 10.0          # how long sessions get to end after DRAINING

    def limits(self) -> Limits:
        return Limits(
            max_message_bytes=self.max_message_bytes, max_audio_packet_bytes=self.max_audio_packet_bytes,
            max_sessions=self.max_sessions, max_prompt_chars=self.max_prompt_chars,
            max_reference_image_bytes=self.max_reference_image_bytes,
            outbound_queue_frames=self.outbound_queue_frames,
            max_reference_image_pixels=self.max_reference_image_pixels, max_stored_npcs=self.max_stored_npcs,
            max_stored_npc_bytes=self.max_stored_npc_bytes, max_parked_memory_bytes=self.max_parked_memory_bytes,
            npc_snapshot_interval_s=self.npc_snapshot_interval_s, voice_jitter_budget_ms=self.voice_jitter_budget_ms,
            max_timed_events=self.max_timed_events, max_prompt_guidance=self.max_prompt_guidance,
        )

    def tls(self) -> ServerTls | None:
        """The TLS material from the configured files; None for plaintext. Raises TlsConfigError."""
        return load_server_tls(self.tls_cert, self.tls_key, self.tls_client_ca)

    def resolved_data_dir(self) -> DataDir:
        return DataDir(self.data_dir if self.data_dir is not None else default_data_dir())


StartupRefused = (UnsafeExposureError, TlsConfigError)
"""What :func:`check_startup` and :class:`Gateway` raise for a configuration that must not start."""


def check_startup(options: ServerOptions) -> tuple[ServerTls | None, list[str]]:
    """Refuse a configuration that must not start (see StartupRefused), before anything is bound.

    Returns the TLS material (None: plaintext) and the warnings to log for what starts but is risky.
    """
    tls = options.tls()
    warnings = check_exposure(
        options.host, api_key=bool(options.api_key), tls=tls is not None,
        client_certificates=tls is not None and tls.requires_client_certificates,
        insecure_no_auth_on_network=options.insecure_no_auth_on_network,
    )
    return tls, warnings


class Gateway:
    """The gRPC server and everything it serves, over a worker link (to a worker process, or to
    an in-process worker).

    Raises UnsafeExposureError or TlsConfigError (see :func:`check_startup`) before binding anything.
    """

    def __init__(self, options: ServerOptions, link: WorkerLinkLike, *, data_dir: DataDir | None = None):
        tls, warnings = check_startup(options)
        for warning in warnings:
            log.warning("%s", warning)
        self.options = options
        self.tls = tls
        limits = options.limits()
        threads = options.encode_threads or min(8, os.cpu_count() or 1)
        self.runtime = GatewayRuntime(
            link=link, data_dir=(data_dir or options.resolved_data_dir()).ensure(), limits=limits,
            worker=WorkerStatus(), sessions=SessionRegistry(limits.max_sessions),
            encode_pool=ThreadPoolExecutor(threads, thread_name_prefix="frame-encode"), version=__version__,
        )
        self.health = health.aio.HealthServicer()
        interceptors = [ApiKeyInterceptor(options.api_key)] if options.api_key else []
        self.server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", limits.max_message_bytes),
            ("grpc.max_send_message_length", limits.max_message_bytes),
            # Conversations last hours: ping idle connections so a game that vanished (no FIN through a NAT)
            # is noticed, its call cancelled and its NPC's memory saved; let clients keep NATs open too.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ])
        add_avatar_service(AvatarService(self.runtime), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        address = bind_address(options.host, options.port)
        try:
            if tls is not None:
                self.port = self.server.add_secure_port(address, tls.credentials())
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises where older versions returned 0
            self.port = 0
        if self.port == 0:
            # grpc refuses a key that does not match its certificate only here, in the same words as a bind error.
            maybe_tls = "; or the TLS key does not match the certificate" if tls is not None else ""
            raise OSError(f"cannot listen on {address} (in use, or not an address of this host{maybe_tls})")
        self._watch: asyncio.Task | None = None
        self._worker_changed = asyncio.Event()
        self._first_ready = asyncio.Event()
        self._draining = False
        self._stopped = False

    @property
    def address(self) -> str:
        return bind_address(self.options.host, self.port)

    @property
    def security(self) -> str:
        """How clients are checked, for the start-up lines: "TLS, client certificates, API key"."""
        parts = []
        if self.tls is not None:
            parts.append("TLS")
            if self.tls.requires_client_certificates:
                parts.append("client certificates")
        else:
            parts.append("plaintext")
        parts.append("API key" if self.options.api_key else "no API key")
        return ", ".join(parts)

    async def start(self) -> None:
        await self._set_serving(False)
        await self.server.start()
        log.info("gateway listening on %s (%s; waiting for the generator worker)", self.address, self.security)
        self._watch = asyncio.get_running_loop().create_task(self._watch_worker(), name="worker-watch")

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Until the worker answered for the first time (health SERVING)."""
        try:
            await asyncio.wait_for(self._first_ready.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def worker_lost(self, reason: str) -> None:
        """The worker died (its sessions already got WorkerLost from the link): NOT_SERVING until it is back."""
        self.runtime.worker.set_not_ready(f"generator worker stopped: {reason}; it is being restarted")
        self._worker_changed.set()

    async def drain(self) -> None:
        """Stop taking sessions, end the live ones with DRAINING + UNAVAILABLE, then stop the server."""
        if self._draining:
            return
        self._draining = True
        await self.health.enter_graceful_shutdown()
        live = self.runtime.sessions.drain_all()
        log.info("draining: %d live session(s)", live)
        if not await self.runtime.sessions.wait_empty(self.options.drain_timeout_s):
            log.warning("%d session(s) still open after %.0fs; cancelling them", len(self.runtime.sessions),
                        self.options.drain_timeout_s)
        await self.stop(grace=1.0)

    async def stop(self, grace: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        await self.server.stop(grace)
        await self.runtime.wait_background(timeout=10.0)
        self.runtime.encode_pool.shutdown(wait=False, cancel_futures=True)

    # -- worker readiness ------------------------------------------------------------------------------------

    async def _watch_worker(self) -> None:
        status = self.runtime.worker
        while True:
            if not status.ready:
                info = await self._query_worker_info()
                if info is None:
                    await asyncio.sleep(WORKER_POLL_INTERVAL_S)
                    continue
                status.set_ready(info)
                await self._set_serving(True)
                self._worker_changed.clear()
                log.info("generator worker ready: model %s on %s%s", info.model_name, info.device,
                         " (RANDOM WEIGHTS: the video is not a real face)" if info.random_weights else "")
                self._first_ready.set()
                continue
            # The supervisor reports a dead worker through worker_lost(); the link notices a replaced one.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._worker_changed.wait(), WORKER_POLL_INTERVAL_S)
            if getattr(self.runtime.link, "connected", True) is False and status.ready:
                status.set_not_ready("the generator worker disconnected; it is being restarted")
            if not status.ready:
                log.warning("generator worker not ready: %s", status.not_ready_reason)
                await self._set_serving(False)

    async def _query_worker_info(self) -> worker_pb2.WorkerInfo | None:
        try:
            reply, _ = await self.runtime.link.request(
                worker_pb2.ToWorker(worker_info_query=worker_pb2.WorkerInfoQuery()), timeout=WORKER_INFO_TIMEOUT_S)
        except (WorkerUnavailableError, WorkerRequestError):
            return None
        return reply.worker_info

    async def _set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)


async def serve(options: ServerOptions, ready_callback: Callable[[int], object] | None = None) -> int:
    """Run the gateway and its worker until SIGINT/SIGTERM; returns the exit status (0 after a drain).

    ``ready_callback(port)`` is called once the worker is ready and the server is SERVING.
    """
    try:
        check_startup(options)
    except StartupRefused as err:
        log.error("%s", err)
        print(f"avatar-backend: {err}", flush=True)
        return 1
    try:
        opus_version = check_opus_available()
    except OpusUnavailableError as err:
        log.error("%s", err)
        print(f"avatar-backend: {err}", flush=True)
        return 1
    log.info("Opus decoder: %s", opus_version)
    data_dir = options.resolved_data_dir().prepare()  # private again, stale temporary files removed
    if ensure_default_character(data_dir):
        log.info("registered the default character in %s", data_dir.root)
    link = GatewayLink(options.worker_endpoint)
    await link.start()
    try:
        gateway = Gateway(options, link, data_dir=data_dir)
    except (OSError, *StartupRefused) as err:
        log.error("%s", err)
        print(f"avatar-backend: {err}", flush=True)
        await link.close()
        return 1
    worker = WorkerProcess(link, WorkerProcessConfig(
        data_dir=data_dir.root, model_config=options.model_config, device=options.device,
        weights=str(options.weights) if options.weights else None, execution=options.execution,
        max_stored_npcs=options.max_stored_npcs, max_stored_npc_bytes=options.max_stored_npc_bytes,
        max_parked_memory_bytes=options.max_parked_memory_bytes,
        npc_snapshot_interval_s=options.npc_snapshot_interval_s,
        voice_jitter_budget_ms=options.voice_jitter_budget_ms, max_batch=options.max_batch,
    ), on_lost=gateway.worker_lost)
    stop_requested = asyncio.Event()
    main_task = asyncio.current_task()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            log.info("%s: draining (send it again to stop at once)", signal.Signals(signum).name)
            stop_requested.set()
        elif main_task is not None:
            main_task.cancel()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await gateway.start()
        print(f"avatar-backend listening on {gateway.address}; starting the generator worker "
              f"({options.model_config} on {options.device})", flush=True)
        try:
            await _until_stopped(worker.start(), stop_requested)
        except WorkerStartError as err:
            log.error("the generator worker did not start: %s", err)
            print(f"avatar-backend: the generator worker did not start: {err}", flush=True)
            return 1
        if not stop_requested.is_set():
            await _until_stopped(gateway.wait_ready(), stop_requested)
        if not stop_requested.is_set():
            print(f"avatar-backend serving on {gateway.address} ({gateway.security})", flush=True)
            if ready_callback is not None:
                ready_callback(gateway.port)
            await stop_requested.wait()
        await gateway.drain()
        return 0
    except asyncio.CancelledError:
        log.warning("stopping without draining")
        return 1
    finally:
        await gateway.stop(grace=0)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        # Shutdown: the worker saves every NPC memory, then exits.
        await worker.stop()
        await link.close()


async def _until_stopped(work: Awaitable, stop_requested: asyncio.Event) -> None:
    """Await ``work`` unless a stop is requested first (then ``work`` is cancelled); re-raise its error."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop_requested.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.done() and not task.cancelled():
        task.result()


def run_server(options: ServerOptions, ready_callback: Callable[[int], object] | None = None) -> int:
    """Blocking form of :func:`serve` for the CLI: ``sys.exit(run_server(ServerOptions(...)))``."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(serve(options, ready_callback))
