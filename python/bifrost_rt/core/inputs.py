"""A turn's inputs: user messages and tool outputs, remembered until the next in-conversation response takes them.

A client-submitted item counts at once (so a pre_turn check right after it sees it) and is matched to the
provider's confirmation later; audio transcripts fill in the item they belong to.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from bifrost_rt.records import TRANSCRIPT_UNAVAILABLE, TurnInput

# Client-chosen strings kept in records are bounded (ids, call ids): a client cannot make a record grow without end.
ID_LIMIT = 256


def bounded_id(value: Any) -> str | None:
    return value[:ID_LIMIT] if isinstance(value, str) else None


def _item_text(item: dict[str, Any]) -> tuple[str, str | None]:
    """(kind, text) of a user message or tool output item."""
    if item.get("type") == "function_call_output":
        output = item.get("output")
        return "tool_output", output if isinstance(output, str) else None
    kind, parts = "text", []
    for part in item.get("content") or ():
        if not isinstance(part, dict):
            continue
        part_type = part.get("type")
        if part_type in ("input_text", "text") and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif part_type == "input_audio":
            kind = "audio"
            if isinstance(part.get("transcript"), str):
                parts.append(part["transcript"])
    return kind, (" ".join(parts) if parts else None)


def input_from_item(item: Any) -> TurnInput | None:
    """The input an item is, when it is one (a user message or a function_call_output)."""
    if not isinstance(item, dict):
        return None
    if item.get("type") == "function_call_output" or (item.get("type") == "message" and item.get("role") == "user"):
        kind, text = _item_text(item)
        return TurnInput(kind, bounded_id(item.get("id")), text, bounded_id(item.get("call_id")))
    return None


def input_dict(turn_input: TurnInput, final: bool = False) -> dict[str, Any]:
    """An input as records and plugins see it; a finished turn marks a transcript that never came."""
    text = turn_input.text
    if text is None and final and turn_input.kind == "audio":
        text = TRANSCRIPT_UNAVAILABLE
    return {"kind": turn_input.kind, "item_id": turn_input.item_id, "call_id": turn_input.call_id, "text": text}


class Inputs:
    """Inputs not yet taken by a turn, bounded; `on_dropped` hears of one pushed out by the cap."""

    def __init__(self, limit: int, on_dropped: Callable[[TurnInput], None]) -> None:
        self._pending: deque[TurnInput] = deque()
        self._by_item: dict[str, TurnInput] = {}
        self._limit = limit
        self._on_dropped = on_dropped

    def pending(self) -> list[TurnInput]:
        return list(self._pending)

    def by_item(self, item_id: str | None) -> TurnInput | None:
        return self._by_item.get(item_id) if item_id else None

    def add(self, turn_input: TurnInput) -> None:
        if len(self._pending) >= self._limit:
            dropped = self._pending.popleft()
            self._by_item.pop(dropped.item_id or "", None)
            self._on_dropped(dropped)
        self._pending.append(turn_input)
        if turn_input.item_id:
            self._by_item[turn_input.item_id] = turn_input

    def submitted(self, turn_input: TurnInput, client_event_id: str | None) -> None:
        """A client's `conversation.item.create`: counted now, confirmed by the provider later."""
        turn_input.unconfirmed_event = client_event_id or ""
        self.add(turn_input)

    def confirmed(self, turn_input: TurnInput) -> None:
        """The provider's `conversation.item.done`/`created`: completes a submitted input, or is a new one."""
        known = self.by_item(turn_input.item_id) or self._unconfirmed_match(turn_input)
        if known is None:
            self.add(turn_input)
            return
        known.unconfirmed_event = None
        if known.item_id is None and turn_input.item_id:
            known.item_id = turn_input.item_id
            self._by_item[turn_input.item_id] = known
        if turn_input.text is not None:
            known.text = turn_input.text

    def deleted(self, item_id: str | None) -> None:
        turn_input = self._by_item.pop(item_id, None) if item_id else None
        if turn_input is not None and turn_input in self._pending:
            self._pending.remove(turn_input)

    def refused(self, client_event_id: str) -> None:
        """A `conversation.item.create` the provider refused never becomes an input."""
        for turn_input in [i for i in self._pending if i.unconfirmed_event == client_event_id]:
            self._pending.remove(turn_input)

    def take(self) -> list[TurnInput]:
        """Everything pending, for the in-conversation response that starts now."""
        taken = list(self._pending)
        self._pending.clear()
        return taken

    def forget(self, item_id: str) -> None:
        """A turn took the item: it is no longer waiting."""
        self._by_item.pop(item_id, None)

    def _unconfirmed_match(self, confirmed: TurnInput) -> TurnInput | None:
        """The oldest client-submitted input the provider's confirmation corresponds to."""
        for candidate in self._pending:
            if (
                candidate.unconfirmed_event is not None
                and candidate.kind == confirmed.kind
                and candidate.call_id == confirmed.call_id
                and (candidate.kind == "audio" or candidate.text == confirmed.text)
            ):
                return candidate
        return None
