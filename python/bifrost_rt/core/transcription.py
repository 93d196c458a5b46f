"""Input-audio transcription bills: each billed exactly once, with the turn that takes the audio item.

A transcript can arrive before its turn starts (held by item), during it (billed to it), or after it finished
(an orphan, billed with the next turn); what is left at the end of a session is recorded on its own.
"""

from __future__ import annotations

from typing import Any

Bill = tuple[dict[str, Any], float]  # (usage with item_id and model, cost)


class Transcriptions:
    def __init__(self) -> None:
        self._held: dict[str, Bill] = {}
        self._orphans: list[dict[str, Any]] = []
        self._orphan_cost = 0.0

    def hold(self, item_id: str, bill: Bill) -> None:
        """For an audio item no turn has taken yet."""
        self._held[item_id] = bill

    def take(self, item_id: str | None) -> Bill | None:
        return self._held.pop(item_id, None) if item_id else None

    def orphan(self, bill: Bill | None) -> None:
        if bill is not None:
            self._orphans.append(bill[0])
            self._orphan_cost += bill[1]

    def take_orphans(self) -> tuple[list[dict[str, Any]], float]:
        taken = (self._orphans, self._orphan_cost)
        self._orphans, self._orphan_cost = [], 0.0
        return taken

    @property
    def has_orphans(self) -> bool:
        return bool(self._orphans)

    def release_held(self) -> None:
        """The session ends: held bills become orphans, to be recorded."""
        for bill in self._held.values():
            self.orphan(bill)
        self._held.clear()
