"""Python client of the avatar backend.

- :class:`AvatarClient` (asyncio) and :class:`SyncAvatarClient` (blocking): characters, NPCs, server info,
  health, and :meth:`AvatarClient.converse` for a live conversation with one NPC.
- :class:`Conversation`: send the NPC's voice (PCM, encoded to Opus here) and control events; iterate the
  received VideoFrame, AudioEcho, SessionStats, SessionEvent and InterruptAck messages.
- :class:`AvatarError`: every failure, with its gRPC status code.
- :class:`Mp4Recorder`: write a conversation's frames and echoed audio to an MP4 file.
- :mod:`.meters`: when an utterance's frames have all arrived, and the A/V offset of each frame.

The messages are those of ``proto/avatar/v1``; import them from ``avatar_backend.proto_gen``.
"""

from avatar_backend.client.aio import VIDEO_CODECS, AvatarClient, Conversation, ServerItem
from avatar_backend.client.errors import AvatarError
from avatar_backend.client.recording import Mp4Recorder, RecordingSummary
from avatar_backend.client.sync import SyncAvatarClient, SyncConversation

__all__ = [
    "VIDEO_CODECS",
    "AvatarClient",
    "AvatarError",
    "Conversation",
    "Mp4Recorder",
    "RecordingSummary",
    "ServerItem",
    "SyncAvatarClient",
    "SyncConversation",
]
