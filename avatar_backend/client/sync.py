"""A blocking client for scripts and tools: the asyncio client run on a private event-loop thread.

    with SyncAvatarClient("127.0.0.1:50051") as client:
        print(client.list_characters())
        with client.converse("guard-7", character_id="default") as conv:
            conv.send_audio_pcm(pcm_int16_48k)
            conv.end_utterance()
            for item in conv:
                ...

The methods, arguments and errors are those of :class:`~avatar_backend.client.aio.AvatarClient` and
:class:`~avatar_backend.client.aio.Conversation`; see there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from avatar_backend.client.aio import AvatarClient, Conversation, ServerItem
from avatar_backend.proto_gen import avatar_service_pb2, converse_pb2

__all__ = ["SyncAvatarClient", "SyncConversation"]

T = TypeVar("T")


class _LoopThread:
    """An event loop running on a daemon thread; coroutines are submitted to it and awaited by blocking."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="avatar-client-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncConversation:
    """Blocking view of a :class:`Conversation`. Use it as ``with``; iterate it for the received items."""

    def __init__(self, runner: _LoopThread, conversation: Conversation) -> None:
        self._runner = runner
        self._conversation = conversation

    def __enter__(self) -> "SyncConversation":
        self.open()
        return self

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.cancel()

    def __iter__(self) -> Iterator[ServerItem]:
        while (item := self.next_item()) is not None:
            yield item

    @property
    def accepted(self) -> converse_pb2.SessionAccepted | None:
        return self._conversation.accepted

    @property
    def ended(self) -> converse_pb2.SessionEnded | None:
        return self._conversation.ended

    @property
    def voice_samples_sent(self) -> int:
        return self._conversation.voice_samples_sent

    @property
    def done(self) -> bool:
        return self._conversation.done

    def open(self) -> converse_pb2.SessionAccepted:
        return self._runner.run(self._conversation.open())

    def send_audio_pcm(self, pcm: np.ndarray | bytes, *, realtime: bool = False) -> int:
        return self._runner.run(self._conversation.send_audio_pcm(pcm, realtime=realtime))

    def send_opus_packet(self, payload: bytes) -> int:
        return self._runner.run(self._conversation.send_opus_packet(payload))

    def end_utterance(self) -> None:
        self._runner.run(self._conversation.end_utterance())

    def emotion(self, name: str, intensity: float = 1.0, *, at_voice_sample: int | None = None) -> None:
        self._runner.run(self._conversation.emotion(name, intensity, at_voice_sample=at_voice_sample))

    def action(self, *, preset: str | None = None, free_text: str | None = None,
               at_voice_sample: int | None = None) -> None:
        self._runner.run(self._conversation.action(preset=preset, free_text=free_text,
                                                   at_voice_sample=at_voice_sample))

    def listening(self, listening: bool) -> None:
        self._runner.run(self._conversation.listening(listening))

    def interrupt(self, played_until: int | None = None,
                  timeout: float | None = 10.0) -> converse_pb2.InterruptAck:
        return self._runner.run(self._conversation.interrupt(played_until, timeout))

    def playback_progress(self, played_until: int) -> None:
        self._runner.run(self._conversation.playback_progress(played_until))

    def next_item(self, timeout: float | None = None) -> ServerItem | None:
        return self._runner.run(self._conversation.next_item(timeout))

    def half_close(self) -> None:
        self._runner.run(self._conversation.half_close())

    def close(self, timeout: float | None = 30.0) -> None:
        self._runner.run(self._conversation.close(timeout))

    def cancel(self) -> None:
        self._runner.run(self._conversation.cancel())


class SyncAvatarClient:
    """Blocking client of AvatarService; same arguments as :class:`AvatarClient`. Close it when done.

    TLS as there: ``SyncAvatarClient("grpcs://host:50051", root_certificates="ca.pem", api_key=key)``, and
    ``client_certificate=..., client_key=...`` for a server that requires client certificates.
    """

    def __init__(self, target: str, **client_options: Any) -> None:
        self._runner = _LoopThread()

        async def make() -> AvatarClient:
            return AvatarClient(target, **client_options)

        try:
            self._client = self._runner.run(make())
        except BaseException:
            self._runner.stop()
            raise
        self.target = target

    def __enter__(self) -> "SyncAvatarClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._runner.loop.is_closed():
            return
        self._runner.run(self._client.close())
        self._runner.stop()

    def wait_ready(self, timeout: float | None = 10.0) -> None:
        self._runner.run(self._client.wait_ready(timeout))

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        return self._runner.run(self._client.health(service, timeout))

    def converse(self, npc_id: str, character_id: str = "", **session_options: Any) -> SyncConversation:
        """See :meth:`AvatarClient.converse`; use the result as ``with``."""
        return SyncConversation(self._runner, self._client.converse(npc_id, character_id, **session_options))

    def register_character(
        self,
        character_id: str,
        image: str | Path | bytes,
        base_prompt: str,
        *,
        emotion_prompts: Mapping[str, str] | None = None,
        action_prompts: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> avatar_service_pb2.Character:
        return self._runner.run(
            self._client.register_character(
                character_id,
                image,
                base_prompt,
                emotion_prompts=emotion_prompts,
                action_prompts=action_prompts,
                replace=replace,
            )
        )

    def get_character(self, character_id: str) -> avatar_service_pb2.Character:
        return self._runner.run(self._client.get_character(character_id))

    def list_characters(self) -> list[avatar_service_pb2.Character]:
        return self._runner.run(self._client.list_characters())

    def delete_character(self, character_id: str, *, delete_npcs: bool = False) -> int:
        return self._runner.run(self._client.delete_character(character_id, delete_npcs=delete_npcs))

    def get_npc(self, npc_id: str) -> avatar_service_pb2.Npc:
        return self._runner.run(self._client.get_npc(npc_id))

    def list_npcs(self, character_id: str = "") -> list[avatar_service_pb2.Npc]:
        return self._runner.run(self._client.list_npcs(character_id))

    def reset_npc(self, npc_id: str) -> avatar_service_pb2.Npc:
        return self._runner.run(self._client.reset_npc(npc_id))

    def delete_npc(self, npc_id: str) -> None:
        self._runner.run(self._client.delete_npc(npc_id))

    def server_info(self) -> avatar_service_pb2.ServerInfo:
        return self._runner.run(self._client.server_info())
