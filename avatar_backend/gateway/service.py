"""The AvatarService servicer: characters, NPCs, server info, and Converse (see session.py)."""

from __future__ import annotations

import asyncio
import logging

import grpc

from avatar_backend.proto_gen import avatar_service_pb2 as pb
from avatar_backend.proto_gen import avatar_service_pb2_grpc, worker_pb2
from avatar_backend.store import CharacterRecord, now_ms, valid_id
from avatar_backend.worker.link import WorkerRequestError, WorkerUnavailableError

from .capabilities import AUDIO_CODECS, AUDIO_SAMPLE_RATES, public_devices, served_video_codecs
from .characters import character_to_proto, check_character_request, prepare_reference_image
from .runtime import GatewayRuntime
from .session import ConverseSession
from .status import CHARACTER_RESOURCE, NPC_RESOURCE, RpcFailure, abort, failure_from_worker
from .wire import MalformedRequest, malformed_request_failure

__all__ = ["AvatarService"]

log = logging.getLogger(__name__)

SERVER_INFO_TIMEOUT_S = 2.0
ID_RULE = "1-128 characters of [A-Za-z0-9_.-]"


def _check_id(field: str, value: str) -> None:
    if not valid_id(value):
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {value!r} is not a valid id ({ID_RULE})")


def _not_found(what: str, resource: tuple[str, str]) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.NOT_FOUND, what, resource=resource)


def _npc_to_proto(state: worker_pb2.NpcState) -> pb.Npc:
    return pb.Npc(
        npc_id=state.npc_id, character_id=state.character_id, memory_bytes=state.memory_bytes,
        blocks_generated=state.blocks_generated, frames_generated=state.frames_generated, live=state.live,
        resume_token=state.resume_token, width=state.width, height=state.height,
        updated_unix_ms=state.updated_unix_ms,
    )


def _rpc(method):
    """Turns an RpcFailure raised by ``method`` into the call's status (INTERNAL for anything unexpected);
    a request that is not a valid protobuf message is INVALID_ARGUMENT."""

    async def handler(self, request, context):
        try:
            if isinstance(request, MalformedRequest):
                raise malformed_request_failure(request)
            return await method(self, request, context)
        except RpcFailure as failure:
            await abort(context, failure)
        except Exception:
            log.exception("%s failed", method.__name__)
            await abort(context, RpcFailure(grpc.StatusCode.INTERNAL, f"{method.__name__} failed in the gateway"))

    handler.__name__ = method.__name__
    handler.__doc__ = method.__doc__
    return handler


class AvatarService(avatar_service_pb2_grpc.AvatarServiceServicer):
    def __init__(self, runtime: GatewayRuntime):
        self._runtime = runtime
        # Serialises character writes and deletes, so two calls never interleave on one directory.
        self._character_lock = asyncio.Lock()

    # -- Converse ------------------------------------------------------------------------------------------

    async def Converse(self, request_iterator, context):
        await ConverseSession(self._runtime, context).run()

    # -- worker requests -----------------------------------------------------------------------------------

    async def _ask_worker(self, msg: worker_pb2.ToWorker, timeout: float | None = None, *,
                          npc_id: str = "") -> worker_pb2.FromWorker:
        try:
            reply, _ = await self._runtime.link.request(msg, timeout=timeout or self._runtime.request_timeout_s)
        except (WorkerRequestError, WorkerUnavailableError) as err:
            raise failure_from_worker(err, resource=(NPC_RESOURCE, npc_id) if npc_id else None) from None
        return reply

    async def _query_npcs(self, npc_id: str = "", character_id: str = "") -> list[worker_pb2.NpcState]:
        try:
            reply = await self._ask_worker(worker_pb2.ToWorker(
                npc_query=worker_pb2.NpcQuery(npc_id=npc_id, character_id=character_id)))
        except RpcFailure as failure:
            if failure.code is grpc.StatusCode.NOT_FOUND:
                return []
            raise
        npcs = [n for n in reply.npc_list.npcs if (not npc_id or n.npc_id == npc_id)
                and (not character_id or n.character_id == character_id)]
        return sorted(npcs, key=lambda n: n.npc_id)

    async def _npc_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for npc in await self._query_npcs():
            counts[npc.character_id] = counts.get(npc.character_id, 0) + 1
        return counts

    def _drop_character_later(self, character_id: str) -> None:
        """Tell the worker to forget a character's cached conditioning (the revision guards it anyway)."""

        async def drop() -> None:
            try:
                await self._runtime.link.request(worker_pb2.ToWorker(
                    drop_character=worker_pb2.DropCharacter(character_id=character_id)),
                    timeout=self._runtime.request_timeout_s)
            except (WorkerRequestError, WorkerUnavailableError) as err:
                log.info("worker did not drop character %s: %s", character_id, err)

        self._runtime.spawn(drop(), name=f"drop-character-{character_id}")

    # -- characters ----------------------------------------------------------------------------------------

    @_rpc
    async def RegisterCharacter(self, request: pb.RegisterCharacterRequest, context) -> pb.Character:
        check_character_request(request, self._runtime.limits)
        png, width, height = await asyncio.to_thread(prepare_reference_image, request.reference_image,
                                                     self._runtime.limits.max_reference_image_pixels)
        data_dir = self._runtime.data_dir
        async with self._character_lock:
            previous = self._read_character(request.character_id)
            if previous is not None and not request.replace:
                raise RpcFailure(grpc.StatusCode.ALREADY_EXISTS,
                                 f"character_id: character {request.character_id!r} already exists; set replace "
                                 "to overwrite it", resource=(CHARACTER_RESOURCE, request.character_id))
            record = CharacterRecord(
                character_id=request.character_id, base_prompt=request.base_prompt,
                emotion_prompts=dict(request.emotion_prompts), action_prompts=dict(request.action_prompts),
                reference_width=width, reference_height=height,
                created_unix_ms=previous.created_unix_ms if previous else now_ms(),
                revision=previous.revision + 1 if previous else 1,
            )
            await asyncio.to_thread(data_dir.write_character, record, png)
        if previous is not None:
            self._drop_character_later(record.character_id)
        log.info("character %s %s (%dx%d, revision %d)", record.character_id,
                 "replaced" if previous else "registered", width, height, record.revision)
        try:
            npc_count = (await self._npc_counts()).get(record.character_id, 0) if previous else 0
        except RpcFailure:
            npc_count = 0  # the character is stored; the count is only informative
        return character_to_proto(record, npc_count)

    def _read_character(self, character_id: str) -> CharacterRecord | None:
        try:
            return self._runtime.data_dir.read_character(character_id)
        except FileNotFoundError:
            return None

    def _require_character(self, character_id: str) -> CharacterRecord:
        _check_id("character_id", character_id)
        record = self._read_character(character_id)
        if record is None:
            raise _not_found(f"character_id: no character {character_id!r} is registered",
                             (CHARACTER_RESOURCE, character_id))
        return record

    @_rpc
    async def GetCharacter(self, request: pb.GetCharacterRequest, context) -> pb.Character:
        record = self._require_character(request.character_id)
        npcs = await self._query_npcs(character_id=record.character_id)
        return character_to_proto(record, len(npcs))

    @_rpc
    async def ListCharacters(self, request: pb.ListCharactersRequest, context) -> pb.ListCharactersResponse:
        records = await asyncio.to_thread(self._runtime.data_dir.list_characters)
        counts = await self._npc_counts()
        return pb.ListCharactersResponse(characters=[
            character_to_proto(r, counts.get(r.character_id, 0))
            for r in sorted(records, key=lambda r: r.character_id)
        ])

    @_rpc
    async def DeleteCharacter(self, request: pb.DeleteCharacterRequest, context) -> pb.DeleteCharacterResponse:
        async with self._character_lock:
            record = self._require_character(request.character_id)
            npcs = await self._query_npcs(character_id=record.character_id)
            if npcs and not request.delete_npcs:
                names = ", ".join(n.npc_id for n in npcs[:5]) + (", ..." if len(npcs) > 5 else "")
                raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"character_id: character {record.character_id!r} is used by {len(npcs)} NPC(s) "
                                 f"({names}); set delete_npcs to delete them too")
            live = [n.npc_id for n in npcs if n.live or self._runtime.sessions.is_live(n.npc_id)]
            if live:
                raise RpcFailure(grpc.StatusCode.ABORTED,
                                 f"NPC(s) {', '.join(live)} of character {record.character_id!r} are in a live "
                                 "session; end them first", resource=(NPC_RESOURCE, live[0]))
            for npc in npcs:
                await self._ask_worker(worker_pb2.ToWorker(delete_npc=worker_pb2.DeleteNpc(npc_id=npc.npc_id)))
            await asyncio.to_thread(self._runtime.data_dir.delete_character, record.character_id)
        self._drop_character_later(record.character_id)
        log.info("character %s deleted with %d NPC(s)", record.character_id, len(npcs))
        return pb.DeleteCharacterResponse(npcs_deleted=len(npcs))

    # -- NPCs ----------------------------------------------------------------------------------------------

    async def _require_npc(self, npc_id: str) -> worker_pb2.NpcState:
        _check_id("npc_id", npc_id)
        # An NPC whose snapshot the worker cannot read is DATA_LOSS (its error passes through), not missing.
        npcs = await self._query_npcs(npc_id=npc_id)
        if not npcs:
            raise _not_found(f"npc_id: no NPC {npc_id!r} exists (an NPC is created by its first Converse)",
                             (NPC_RESOURCE, npc_id))
        return npcs[0]

    def _refuse_if_live(self, npc_id: str, action: str) -> None:
        if self._runtime.sessions.is_live(npc_id):
            raise RpcFailure(grpc.StatusCode.ABORTED,
                             f"npc_id: NPC {npc_id!r} is in a live session; end it before {action} it",
                             resource=(NPC_RESOURCE, npc_id))

    @_rpc
    async def GetNpc(self, request: pb.GetNpcRequest, context) -> pb.Npc:
        return _npc_to_proto(await self._require_npc(request.npc_id))

    @_rpc
    async def ListNpcs(self, request: pb.ListNpcsRequest, context) -> pb.ListNpcsResponse:
        if request.character_id:
            _check_id("character_id", request.character_id)
        npcs = await self._query_npcs(character_id=request.character_id)
        return pb.ListNpcsResponse(npcs=[_npc_to_proto(n) for n in npcs])

    @_rpc
    async def ResetNpc(self, request: pb.ResetNpcRequest, context) -> pb.Npc:
        # No lookup first: the worker answers NOT_FOUND, or DATA_LOSS for a snapshot it cannot read.
        _check_id("npc_id", request.npc_id)
        self._refuse_if_live(request.npc_id, "resetting")
        reply = await self._ask_worker(worker_pb2.ToWorker(reset_npc=worker_pb2.ResetNpc(npc_id=request.npc_id)),
                                       npc_id=request.npc_id)
        if reply.WhichOneof("body") == "npc_list" and reply.npc_list.npcs:
            return _npc_to_proto(reply.npc_list.npcs[0])
        return _npc_to_proto(await self._require_npc(request.npc_id))

    @_rpc
    async def DeleteNpc(self, request: pb.DeleteNpcRequest, context) -> pb.DeleteNpcResponse:
        # No lookup first: an NPC whose snapshot is unreadable must still be deletable.
        _check_id("npc_id", request.npc_id)
        self._refuse_if_live(request.npc_id, "deleting")
        await self._ask_worker(worker_pb2.ToWorker(delete_npc=worker_pb2.DeleteNpc(npc_id=request.npc_id)),
                               npc_id=request.npc_id)
        return pb.DeleteNpcResponse()

    # -- server info ---------------------------------------------------------------------------------------

    @_rpc
    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context) -> pb.ServerInfo:
        worker = self._runtime.worker
        info = worker.info
        if worker.ready:
            # Fresh telemetry when the worker answers quickly; the cached info otherwise.
            try:
                reply, _ = await self._runtime.link.request(
                    worker_pb2.ToWorker(worker_info_query=worker_pb2.WorkerInfoQuery()), timeout=SERVER_INFO_TIMEOUT_S)
                info = reply.worker_info
            except (WorkerRequestError, WorkerUnavailableError):
                pass
        server_info = pb.ServerInfo(
            version=self._runtime.version,
            video_codecs=served_video_codecs(),
            audio_codecs=list(AUDIO_CODECS),
            audio_sample_rates=list(AUDIO_SAMPLE_RATES),
            limits=self._runtime.limits.to_proto(),
            worker_ready=worker.ready,
        )
        model = worker.capabilities
        if info is not None and model is not None:
            server_info.model.CopyFrom(pb.ModelInfo(
                name=model.model_name, config_json=info.config_json, random_weights=info.random_weights,
                weights_sha256=info.weights_sha256, parameters=info.parameters,
                denoising_steps=model.denoising_steps, first_block_frames=model.first_block_frames,
                block_frames=model.block_frames, default_width=model.default_width,
                default_height=model.default_height, default_fps=model.default_fps,
                prompt_guidance=model.prompt_guidance, prompt_onset_latents=model.prompt_onset_latents,
            ))
            server_info.limits.max_prompt_guidance = self._runtime.limits.prompt_guidance_limit(model.prompt_guidance)
            server_info.video_sizes.extend(model.video_sizes_proto())
            server_info.fps.extend(model.fps)
            server_info.devices.extend(public_devices(info.devices))
            server_info.worker_device = info.device
        return server_info
