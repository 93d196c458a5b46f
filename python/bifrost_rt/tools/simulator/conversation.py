"""Conversation items: validation of client items, ordering, token counts, and `conversation.item.retrieve`."""

from __future__ import annotations

import base64
import binascii
import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bifrost_rt.tools.simulator.audio import BYTES_PER_MS, PCM16, tone_bytes
from bifrost_rt.tools.simulator.events import ClientError, invalid_value, missing_parameter
from bifrost_rt.tools.simulator.ids import new_id
from bifrost_rt.tools.simulator.usage import Tokens, input_audio_tokens, text_tokens

# Input audio kept for `conversation.item.retrieve`, per connection; older items are retrieved without audio bytes.
# Bounds memory when the simulator serves many long sessions.
RETAINED_AUDIO_BYTES = 4 * 1024 * 1024

_PART_TYPES = {
    "user": ("input_text", "input_audio", "input_image"),
    "system": ("input_text",),
    "assistant": ("output_text", "output_audio"),
}


@dataclass
class Item:
    """One conversation item: its wire form without audio bytes, and the audio it carries per content index."""

    data: dict[str, Any]
    audio_ms: dict[int, float] = field(default_factory=dict)
    audio: dict[int, bytes] = field(default_factory=dict)
    audio_kind: str = PCM16

    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def type(self) -> str:
        return self.data["type"]

    @property
    def role(self) -> str | None:
        return self.data.get("role")

    def input_tokens(self) -> Tokens:
        """What this item costs as part of a later response's input (see usage.py)."""
        data = self.data
        if data["type"] == "function_call":
            return Tokens(text=text_tokens(data["name"] + data["arguments"]))
        if data["type"] == "function_call_output":
            return Tokens(text=text_tokens(data["output"]))
        tokens = Tokens()
        for index, part in enumerate(data.get("content", [])):
            if part["type"] in ("input_text", "output_text"):
                tokens.text += text_tokens(part.get("text") or "")
            elif part["type"] in ("input_audio", "output_audio"):
                tokens.audio += input_audio_tokens(self.audio_ms.get(index, 0))
        return tokens

    def retrieved(self) -> dict[str, Any]:
        """The wire form with audio bytes: retained input audio, regenerated output audio."""
        data = copy.deepcopy(self.data)
        for index, part in enumerate(data.get("content", [])):
            if part["type"] == "input_audio" and index in self.audio:
                part["audio"] = base64.b64encode(self.audio[index]).decode("ascii")
            elif part["type"] == "output_audio":
                audio = tone_bytes(self.audio_kind, 0, int(self.audio_ms.get(index, 0)))
                part["audio"] = base64.b64encode(audio).decode("ascii")
        return data


class Conversation:
    def __init__(self) -> None:
        self.id = new_id("conv")
        self._order: list[str] = []
        self._items: dict[str, Item] = {}
        self._retained: deque[tuple[str, int]] = deque()
        self._retained_bytes = 0

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._items

    def get(self, item_id: str) -> Item | None:
        return self._items.get(item_id)

    def items(self) -> list[Item]:
        return [self._items[item_id] for item_id in self._order]

    def insert(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Adds `item` after `previous_item_id` ("root": first; None: last); returns the id now before it."""
        if previous_item_id is None:
            index = len(self._order)
        elif previous_item_id == "root":
            index = 0
        else:
            index = self._order.index(previous_item_id) + 1
        self._order.insert(index, item.id)
        self._items[item.id] = item
        # A copy: retaining may evict this very item's audio when it alone exceeds the budget.
        for content_index, audio in list(item.audio.items()):
            self._retain(item, content_index, len(audio))
        return self._order[index - 1] if index else None

    def delete(self, item_id: str) -> None:
        self._order.remove(item_id)
        item = self._items.pop(item_id)
        self._retained_bytes -= sum(map(len, item.audio.values()))
        item.audio.clear()

    def _retain(self, item: Item, content_index: int, size: int) -> None:
        self._retained.append((item.id, content_index))
        self._retained_bytes += size
        while self._retained_bytes > RETAINED_AUDIO_BYTES and self._retained:
            old_id, old_index = self._retained.popleft()
            old = self._items.get(old_id)
            if old is not None and old_index in old.audio:
                self._retained_bytes -= len(old.audio.pop(old_index))


def decode_audio(value: Any, param: str) -> bytes:
    if not isinstance(value, str):
        raise ClientError(f"Invalid type for '{param}': expected a base64 string.", code="invalid_type", param=param)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise invalid_value(param, f"Invalid value for '{param}': not valid base64.") from None


def item_from_client(raw: Any, input_kind: str, output_kind: str) -> Item:
    """A validated item from `conversation.item.create` (or `response.create` input); raises ClientError."""
    if not isinstance(raw, dict):
        raise ClientError("Invalid type for 'item': expected an object.", code="invalid_type", param="item")
    item_id = raw.get("id") or new_id("item")
    if not isinstance(item_id, str) or len(item_id) > 64:
        raise invalid_value("item.id", "Invalid value for 'item.id': expected a string of at most 64 characters.")
    kind = raw.get("type")
    if kind == "message":
        return _message(raw, item_id, input_kind, output_kind)
    if kind == "function_call":
        name, arguments = raw.get("name"), raw.get("arguments")
        arguments = "" if arguments is None else arguments
        if not isinstance(name, str):
            raise missing_parameter("item.name")
        if not isinstance(arguments, str):
            raise invalid_value("item.arguments", "Invalid value for 'item.arguments': expected a JSON string.")
        call_id = raw.get("call_id") or new_id("call")
        return Item({"id": item_id, "type": "function_call", "status": "completed", "name": name,
                     "call_id": str(call_id), "arguments": arguments})
    if kind == "function_call_output":
        call_id, output = raw.get("call_id"), raw.get("output")
        if not isinstance(call_id, str):
            raise missing_parameter("item.call_id")
        if not isinstance(output, str):
            raise missing_parameter("item.output")
        return Item({"id": item_id, "type": "function_call_output", "status": "completed", "call_id": call_id,
                     "output": output})
    raise invalid_value(
        "item.type",
        f"Invalid value: '{kind}'. Supported values are: 'message', 'function_call' and 'function_call_output'.",
    )


def _message(raw: dict[str, Any], item_id: str, input_kind: str, output_kind: str) -> Item:
    role = raw.get("role")
    if role not in _PART_TYPES:
        raise invalid_value(
            "item.role", f"Invalid value: '{role}'. Supported values are: 'user', 'assistant' and 'system'."
        )
    content = raw.get("content")
    if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
        raise missing_parameter("item.content")
    kind = output_kind if role == "assistant" else input_kind
    item = Item({"id": item_id, "type": "message", "status": "completed", "role": role, "content": []}, audio_kind=kind)
    for index, part in enumerate(content):
        param = f"item.content[{index}]"
        part_type = part.get("type")
        if part_type not in _PART_TYPES[role]:
            allowed = ", ".join(f"'{t}'" for t in _PART_TYPES[role])
            raise invalid_value(
                f"{param}.type", f"Invalid value: '{part_type}'. Supported values for {role} are: {allowed}."
            )
        if part_type in ("input_text", "output_text"):
            if not isinstance(part.get("text"), str):
                raise missing_parameter(f"{param}.text")
            item.data["content"].append({"type": part_type, "text": part["text"]})
        elif part_type == "input_image":
            if not isinstance(part.get("image_url"), str):
                raise missing_parameter(f"{param}.image_url")
            item.data["content"].append({"type": part_type, "image_url": part["image_url"],
                                         "detail": part.get("detail") or "auto"})
        else:
            audio = decode_audio(part["audio"], f"{param}.audio") if part.get("audio") is not None else b""
            transcript = part.get("transcript")
            transcript = transcript if isinstance(transcript, str) else None
            item.data["content"].append({"type": part_type, "transcript": transcript})
            item.audio_ms[index] = len(audio) / BYTES_PER_MS[kind]
            if audio and role == "user":
                item.audio[index] = audio
    return item
