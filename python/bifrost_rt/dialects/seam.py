"""The dialect seam: what a client or a provider speaks, translated to and from OpenAI GA events.

The relay core only ever observes GA events, so turns, hooks, governance, pricing and logs do not depend on the
dialect. A relay has two dialects: the client's (client message → GA, GA → client message) and the provider's
(GA → provider message, provider message → GA). The identity dialect forwards the very same string, which keeps
OpenAI GA on both sides byte-faithful and at one native call per frame.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from bifrost_rt.errors import RealtimeError


class Untranslatable(Exception):
    """A message the dialect cannot express; the sender is told with this OpenAI-shaped error."""

    def __init__(self, error: RealtimeError) -> None:
        super().__init__(error.message)
        self.error = error


class Dialect(Protocol):
    identity: bool  # True: messages already are GA events; the relay then skips translation entirely

    def inbound(self, message: str | bytes) -> list[str]:
        """A message from this side's peer as zero or more GA event texts; raises Untranslatable."""

    def outbound(self, event: str) -> list[str | bytes]:
        """A GA event text as zero or more messages for this side's peer."""

    def answers(self) -> list[str]:
        """GA events this dialect answers in its peer's name, drained after each `outbound`: what an OpenAI server
        confirms and this peer does not (a created item, a cleared buffer), observed by the core like the peer's."""


@runtime_checkable
class Reconnecting(Protocol):
    """A provider dialect whose peer ends connections (Gemini's `goAway`) or takes its configuration only when a
    connection opens: it says when the next connection is due and what opens it."""

    def reconnect_due(self) -> list[str | bytes] | RealtimeError | None:
        """The opening messages of the next connection when one is due now (between turns), a RealtimeError when one
        is due and the session cannot be resumed, None otherwise. Asked after every message; due once."""

    def reconnect_failed(self) -> None:
        """The next connection could not be opened."""

    def opening(self) -> list[str | bytes]:
        """What the provider is sent when the client has said nothing for a while (its default setup), once."""


class Identity:
    """OpenAI GA: nothing to translate."""

    identity = True

    def inbound(self, message: str | bytes) -> list[str]:
        return [message] if isinstance(message, str) else []

    def outbound(self, event: str) -> list[str | bytes]:
        return [event]

    def answers(self) -> list[str]:
        return []


IDENTITY = Identity()
