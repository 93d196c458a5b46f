"""Recorded turn audio on disk: one file per turn and direction, bounded by total size and by age.

Files are `{turn_id}.{input|output}.{wav|ogg}` in one directory, written to a temporary name and renamed, so a
reader never sees half a file. Only the audio writer's task mutates the store (puts and sweeps), so no lock is
needed; the size cap deletes the oldest files first as soon as a put exceeds it, the retention period is enforced by
the periodic sweep (which also rereads the directory, so files of other processes sharing it count too).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import OrderedDict
from pathlib import Path

from bifrost_rt.state.audio_formats import extension, media_type

logger = logging.getLogger("bifrost_rt.audio")

DIRECTIONS = ("input", "output")
_TURN_ID = re.compile(r"turn_[0-9A-Za-z]{1,64}")
_FILE = re.compile(r"(turn_[0-9A-Za-z]{1,64})\.(input|output)\.(wav|ogg)")


def valid_turn_id(turn_id: str) -> bool:
    return _TURN_ID.fullmatch(turn_id) is not None


class AudioStore:
    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int, retention_s: float) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.retention_s = retention_s
        self._files: OrderedDict[str, tuple[int, float]] = OrderedDict()  # name → (size, mtime), oldest first
        self.total_bytes = 0
        self.evicted = 0
        self.expired = 0
        self.too_large = 0

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._rescan()

    def _rescan(self) -> None:
        found = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if _FILE.fullmatch(entry.name):
                    try:
                        stat = entry.stat()
                    except FileNotFoundError:
                        continue
                    found.append((stat.st_mtime, entry.name, stat.st_size))
        found.sort()
        self._files = OrderedDict((name, (size, mtime)) for mtime, name, size in found)
        self.total_bytes = sum(size for size, _ in self._files.values())

    def put(self, turn_id: str, direction: str, audio_format: str, data: bytes) -> bool:
        """Stores one recording; False when it alone exceeds the cap. Older files go until the total fits."""
        if len(data) > self.max_bytes:
            self.too_large += 1
            return False
        name = f"{turn_id}.{direction}.{extension(audio_format)}"
        path = self.directory / name
        partial = path.with_name(f".{name}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)
        previous = self._files.pop(name, None)
        if previous is not None:
            self.total_bytes -= previous[0]
        self._files[name] = (len(data), time.time())
        self.total_bytes += len(data)
        while self.total_bytes > self.max_bytes and self._files:
            oldest = next(iter(self._files))
            self._delete(oldest)
            self.evicted += 1
        return True

    def sweep(self, now: float | None = None) -> int:
        """Deletes the files past the retention period (and any beyond the cap); how many went."""
        self._rescan()
        limit = (now or time.time()) - self.retention_s
        expired = [name for name, (_, mtime) in self._files.items() if mtime < limit]
        for name in expired:
            self._delete(name)
        self.expired += len(expired)
        while self.total_bytes > self.max_bytes and self._files:
            self._delete(next(iter(self._files)))
            self.evicted += 1
        return len(expired)

    def _delete(self, name: str) -> None:
        size, _ = self._files.pop(name)
        self.total_bytes -= size
        try:
            (self.directory / name).unlink()
        except FileNotFoundError:
            pass

    def find(self, turn_id: str, direction: str) -> tuple[Path, str] | None:
        """The file and media type of a turn's recording in one direction, if it is stored."""
        if not valid_turn_id(turn_id) or direction not in DIRECTIONS:
            return None
        for audio_format in ("pcm16", "ogg-opus"):
            path = self.directory / f"{turn_id}.{direction}.{extension(audio_format)}"
            if path.is_file():
                return path, media_type(audio_format)
        return None
