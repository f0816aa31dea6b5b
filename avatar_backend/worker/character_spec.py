"""A character on the worker link: the gateway sends the record it keeps (and the reference image as the
OpenNpc payload), the worker rebuilds the record from it. Both directions here, so they cannot drift."""

from __future__ import annotations

from avatar_backend.proto_gen import worker_pb2
from avatar_backend.store import CharacterRecord

__all__ = ["record_from_spec", "spec_from_record"]


def spec_from_record(record: CharacterRecord) -> worker_pb2.CharacterSpec:
    return worker_pb2.CharacterSpec(
        character_id=record.character_id, revision=record.revision, base_prompt=record.base_prompt,
        emotion_prompts=record.emotion_prompts, action_prompts=record.action_prompts)


def record_from_spec(spec: worker_pb2.CharacterSpec) -> CharacterRecord:
    return CharacterRecord(character_id=spec.character_id, base_prompt=spec.base_prompt,
                           emotion_prompts=dict(spec.emotion_prompts), action_prompts=dict(spec.action_prompts),
                           revision=int(spec.revision))
