"""What the pages show, shaped from turn-log rows, the live registry and governance: no I/O, no HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from bifrost_rt.state.turn_log import Row

TURN_STATUSES = ("completed", "cancelled", "failed", "incomplete", "interrupted", "refused")
TRANSPORTS = ("websocket", "webrtc")

# The timeline's drawing area, in SVG user units: a label column, then the bars.
TIMELINE_WIDTH = 1000
TIMELINE_LABEL = 70
TIMELINE_ROW = 22
TIMELINE_AXIS = 24


def when(unix: float | None) -> str:
    if unix is None:
        return ""
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def seconds(ms: float | None) -> str:
    if ms is None:
        return "–"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def usd(amount: float | None) -> str:
    if amount is None:
        return "–"
    return f"${amount:.4f}" if amount < 100 else f"${amount:,.2f}"


@dataclass(slots=True)
class Segment:
    kind: str  # queue | wait (to the first delta) | stream (first delta to done) | refused
    x: float
    width: float
    title: str


@dataclass(slots=True)
class TimelineRow:
    turn_id: str
    label: str
    y: float
    segments: list[Segment]


@dataclass(slots=True)
class Gap:
    x: float
    width: float
    y: float
    label: str


@dataclass(slots=True)
class Timeline:
    width: int
    height: int
    rows: list[TimelineRow]
    gaps: list[Gap]
    ticks: list[tuple[float, str]]
    span_ms: float


def _request_time(row: Row) -> float:
    """When the turn was asked for: response.created minus the queue time."""
    queue = (row.get("latency_ms") or {}).get("queue") or 0.0
    return float(row["started_at"]) - queue / 1000


def _end_time(row: Row) -> float:
    total = (row.get("latency_ms") or {}).get("total")
    return _request_time(row) + total / 1000 if total is not None else float(row["ended_at"])


def timeline(rows: list[Row]) -> Timeline:
    """Each turn as a bar from its request to its end, to one scale: the queue, the wait for the first delta, then
    the output until `response.done`; the idle time between one turn's end and the next request is a gap."""
    if not rows:
        return Timeline(TIMELINE_WIDTH, TIMELINE_AXIS, [], [], [], 0.0)
    starts = [_request_time(row) for row in rows]
    ends = [max(_end_time(row), start) for row, start in zip(rows, starts, strict=True)]
    origin = min(starts)
    span = max(max(ends) - origin, 0.001)
    scale = (TIMELINE_WIDTH - TIMELINE_LABEL - 10) / span

    def x(moment: float) -> float:
        return round(TIMELINE_LABEL + (moment - origin) * scale, 2)

    def width(start: float, end: float) -> float:
        return max(round((end - start) * scale, 2), 1.0)  # a turn of no length still shows

    drawn: list[TimelineRow] = []
    gaps: list[Gap] = []
    previous_end: float | None = None
    for index, (row, start, end) in enumerate(zip(rows, starts, ends, strict=True)):
        y = TIMELINE_AXIS + index * TIMELINE_ROW
        latency = row.get("latency_ms") or {}
        created = float(row["started_at"])
        first = start + latency["first_delta"] / 1000 if latency.get("first_delta") is not None else None
        segments: list[Segment] = []
        if row["status"] == "refused":
            segments.append(Segment("refused", x(start), width(start, end), f"refused: {row.get('status_reason') or ''}"))
        else:
            segments.append(Segment("queue", x(start), width(start, created), f"queue {seconds(latency.get('queue'))}"))
            if first is not None:
                segments.append(Segment("wait", x(created), width(created, first), f"first delta {seconds(latency.get('first_delta'))}"))
                segments.append(Segment("stream", x(first), width(first, end), f"total {seconds(latency.get('total'))}"))
            else:
                segments.append(Segment("wait", x(created), width(created, end), f"total {seconds(latency.get('total'))}, no output"))
        drawn.append(TimelineRow(row["id"], f"#{index + 1}", y, segments))
        if previous_end is not None and start > previous_end:
            gaps.append(Gap(x(previous_end), width(previous_end, start), y - TIMELINE_ROW / 2, f"gap {seconds((start - previous_end) * 1000)}"))
        previous_end = end if previous_end is None else max(previous_end, end)
    ticks = [(x(origin + span * part / 4), seconds(span * part / 4 * 1000)) for part in range(5)]
    return Timeline(TIMELINE_WIDTH, TIMELINE_AXIS + len(rows) * TIMELINE_ROW + 6, drawn, gaps, ticks, span * 1000)


@dataclass(slots=True)
class TurnView:
    row: Row
    number: int
    inputs: list[dict[str, Any]] = field(default_factory=list)
    tool_outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def usage(self) -> dict[str, int]:
        return self.row.get("usage") or {}

    @property
    def transcription_tokens(self) -> int:
        return sum(int(t.get("total_tokens") or 0) for t in self.row.get("transcription_usage") or ())

    @property
    def refused_by(self) -> str | None:
        """The plugin or limit that withheld the turn (governance refusals name their limit in the code)."""
        if self.row["status"] != "refused":
            return None
        error = self.row.get("error") or {}
        who = error.get("plugin") or "the gateway"
        return f"{who}: {error.get('code') or self.row.get('status_reason') or 'refused'}"

    def recordings(self, prefix: str) -> list[dict[str, str]]:
        """The turn's recorded audio, per direction, as the page's players load it (empty when not recorded)."""
        found = []
        for direction in ("input", "output"):
            clip = (self.row.get("audio") or {}).get(direction)
            if isinstance(clip, dict):
                length = seconds(clip.get("duration_ms"))
                cut = ", cut at the size cap" if clip.get("truncated") else ""
                found.append(
                    {
                        "direction": direction,
                        "label": f"{'user' if direction == 'input' else 'model'} audio · {clip.get('format')} · {length}{cut}",
                        "url": f"{prefix}/turns/{self.row['id']}/audio/{direction}",
                    }
                )
        return found


def turn_views(rows: list[Row], first_number: int) -> list[TurnView]:
    views = []
    for offset, row in enumerate(rows):
        view = TurnView(row, first_number + offset)
        for item in row.get("inputs") or ():
            (view.tool_outputs if item.get("kind") == "tool_output" else view.inputs).append(item)
        views.append(view)
    return views


def session_endings(rows: list[Row]) -> list[dict[str, Any]]:
    """How each gateway session of the group ended, as far as its turns tell: the close code and reason of a
    turn the ending cut short (interrupted or failed), else nothing (a session that closed between turns)."""
    endings: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["status"] not in ("interrupted", "failed"):
            continue
        reason = row.get("status_reason") or ""
        error = row.get("error") or {}
        code = error.get("close_code")
        if code is None and ":" in reason:
            tail = reason.rsplit(":", 1)[1]
            code = int(tail) if tail.isdigit() else None
        endings[row["session_id"]] = {
            "session_id": row["session_id"],
            "reason": reason,
            "close_code": code,
            "close_reason": error.get("close_reason") or "",
            "error": error.get("code"),
        }
    return list(endings.values())


def live_rows(registry: Any, now: float) -> list[dict[str, Any]]:
    rows = []
    for live in registry.live():
        session = live.session
        rows.append(
            {
                "session_id": session.id,
                "session_group": session.session_group,
                "transport": session.transport,
                "virtual_key": session.principal.name,
                "model": session.model,
                "age_s": round(max(0.0, now - session.started_at), 1),
                "turns": session.turns_recorded,
                "open_turns": session.open_turns,
            }
        )
    rows.sort(key=lambda row: row["age_s"])
    return rows
