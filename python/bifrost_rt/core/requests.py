"""Client `response.create` requests waiting for the provider's `response.created`, and how one is matched."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from bifrost_rt.core.inputs import bounded_id, input_from_item
from bifrost_rt.policy.hooks import TurnRequest
from bifrost_rt.records import RAW_LIMIT, TurnInput


@dataclass(slots=True)
class PendingCreate:
    """A client `response.create` not yet matched to a `response.created`."""

    event_id: str | None
    at: float  # monotonic
    conversation: str
    metadata: Any
    inputs: list[TurnInput]
    response: dict[str, Any]
    request: TurnRequest | None = None  # set when plugins checked it
    raw: str | None = None  # the frame, when raw frames are kept


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class Requests:
    """A bounded FIFO: the oldest request is dropped first when the provider never answers some."""

    def __init__(self, limit: int, keep_raw: bool) -> None:
        self._pending: deque[PendingCreate] = deque(maxlen=limit)
        self._keep_raw = keep_raw

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, frame: str, event: dict[str, Any], event_id: str | None) -> PendingCreate:
        response = _dict(event.get("response"))
        inputs = [i for i in map(input_from_item, response.get("input") or ()) if i is not None]
        pending = PendingCreate(
            bounded_id(event_id),
            time.monotonic(),
            response.get("conversation") or "auto",
            response.get("metadata"),
            inputs,
            response,
            raw=frame[:RAW_LIMIT] if self._keep_raw else None,
        )
        self._pending.append(pending)
        return pending

    def withdraw(self, request: TurnRequest) -> None:
        """A checked request was refused and never went to the provider."""
        for pending in self._pending:
            if pending.request is request:
                self._pending.remove(pending)
                return

    def refused(self, client_event_id: str | None) -> None:
        """The provider refused a request (its error names it, or, unnamed, the latest one)."""
        for pending in reversed(self._pending):
            if client_event_id is None or pending.event_id == client_event_id:
                self._pending.remove(pending)
                return

    def match(self, metadata: Any, has_metadata: bool) -> PendingCreate | None:
        """The request a `response.created` answers: equal metadata when it carries some, else the oldest."""
        if not self._pending:
            return None
        for pending in self._pending:
            # A request that set metadata gets a response carrying it: an unlabelled response is someone else's.
            if (pending.metadata == metadata) if has_metadata else (pending.metadata is None):
                self._pending.remove(pending)
                return pending
        return self._pending.popleft()
