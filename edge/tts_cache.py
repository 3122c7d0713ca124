"""Phrase cache: ready-to-send Opus frames for text already spoken, in memory and on disk.

Assistants say the same things again and again (greetings, apologies, "one moment"),
and a hit skips both synthesis and encoding. Entries are keyed by everything that
changes the bytes: voice, normalized text, sample rate, frame length and the language
it was spoken as (one phrase cache serves every language's voice). The disk
tier survives restarts: one msgpack file per key under a hashed name, written to a
temp file and renamed so that a crash never leaves a half-written entry; a file
that does not decode is removed and counts as a miss.

Both tiers are bounded: memory by entries, disk by bytes (``disk_max_mb``). The disk
tier evicts the least recently used files; recency is the file's modification time,
refreshed on every disk hit, so it survives restarts (the index is rebuilt from the
directory at start). One edge process owns a cache directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import msgpack
from cachetools import LRUCache

from shared.log import log_event

log = logging.getLogger("edge.tts_cache")

_FORMAT = 1


@dataclass(frozen=True)
class CacheKey:
    voice: str
    text: str  # already normalized for speech
    sample_rate: int
    frame_ms: int
    language: str = ""  # primary subtag ("en", "zh") the text was spoken as

    def digest(self) -> str:
        raw = "\x1f".join((self.voice, self.text, str(self.sample_rate), str(self.frame_ms), self.language))
        return hashlib.sha256(raw.encode()).hexdigest()


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    disk_hits: int = 0
    corrupt: int = 0
    disk_evictions: int = 0


class _DiskIndex(LRUCache):
    """Entry files by recency with their sizes; evicting one deletes its file."""

    def __init__(self, max_bytes: int, on_evict: Callable[[Path], None]):
        super().__init__(maxsize=max_bytes, getsizeof=lambda size: size)
        self._on_evict = on_evict

    def popitem(self):
        path, size = super().popitem()
        self._on_evict(path)
        return path, size


class PhraseCache:
    """Bounded LRU in memory in front of an optional size-capped directory; safe to call from several threads."""

    def __init__(self, memory_items: int = 512, disk_dir: str | Path | None = None, disk_max_mb: float = 256):
        self.memory_items = memory_items
        self.disk_dir = Path(disk_dir).expanduser() if disk_dir else None
        self.disk_max_bytes = int(disk_max_mb * 1024 * 1024)
        self.stats = CacheStats()
        self._mem: LRUCache[CacheKey, list[bytes]] = LRUCache(maxsize=max(memory_items, 1))
        self._disk = _DiskIndex(self.disk_max_bytes, self._evict_file)
        self._lock = threading.Lock()
        if self.disk_dir is not None:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            self._scan()

    @property
    def disk_bytes(self) -> int:
        """Bytes of entry files on disk (what the cap bounds)."""
        return self._disk.currsize

    def __len__(self) -> int:
        return len(self._mem)

    def get(self, key: CacheKey) -> list[bytes] | None:
        with self._lock:
            frames = self._mem.get(key)  # a hit makes it the most recent
            if frames is not None:
                self.stats.hits += 1
                return frames
        frames = self._read(key)
        with self._lock:
            if frames is None:
                self.stats.misses += 1
                return None
            self.stats.hits += 1
            self.stats.disk_hits += 1
            self._remember(key, frames)
        return frames

    def put(self, key: CacheKey, frames: list[bytes]) -> None:
        frames = list(frames)
        with self._lock:
            self._remember(key, frames)
        self._write(key, frames)

    def contains(self, key: CacheKey) -> bool:
        """In memory or on disk (without counting a lookup)."""
        with self._lock:
            if key in self._mem:
                return True
        path = self._path(key)
        return path is not None and path.exists()

    def _remember(self, key: CacheKey, frames: list[bytes]) -> None:
        if self.memory_items > 0:
            self._mem[key] = frames

    # -- disk tier
    def _scan(self) -> None:
        """Rebuild the disk index from the directory, oldest first; trims to the cap if it shrank."""
        found = []
        for path in self.disk_dir.glob("*/*.msgpack"):
            if path.name.startswith(".tmp-"):  # left by a crash between write and rename
                path.unlink(missing_ok=True)
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            found.append((st.st_mtime_ns, path, st.st_size))
        with self._lock:
            for _, path, size in sorted(found):
                self._index(path, size)

    def _index(self, path: Path, size: int) -> None:
        """Record ``path`` as the most recent entry (lock held); evicts older files past the cap."""
        self._disk.pop(path, None)
        try:
            self._disk[path] = size
        except ValueError:  # a single entry bigger than the whole cap is not kept
            self._evict_file(path)

    def _touch(self, path: Path, size: int) -> None:
        """A disk hit: most recent in the index and on disk (mtime), so recency survives a restart."""
        with self._lock:
            self._index(path, size)
        try:
            os.utime(path)
        except OSError:
            pass

    def _evict_file(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.stats.disk_evictions += 1

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._disk.pop(path, None)

    def _path(self, key: CacheKey) -> Path | None:
        if self.disk_dir is None:
            return None
        digest = key.digest()
        return self.disk_dir / digest[:2] / f"{digest}.msgpack"

    def _read(self, key: CacheKey) -> list[bytes] | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log_event(log, "tts cache: unreadable entry", level=logging.WARNING, path=str(path), error=str(exc))
            return None
        try:
            entry = msgpack.unpackb(data, raw=False)
            if (entry["v"], entry["voice"], entry["text"], entry["rate"], entry["frame_ms"],
                    entry.get("language", "")) != (
                _FORMAT, key.voice, key.text, key.sample_rate, key.frame_ms, key.language
            ):
                raise ValueError("entry does not match its key")
            frames = entry["frames"]
            if not isinstance(frames, list) or not all(isinstance(f, bytes) and f for f in frames):
                raise ValueError("bad frames")
        except Exception as exc:  # any undecodable file is dropped, never served
            with self._lock:
                self.stats.corrupt += 1
            log_event(log, "tts cache: corrupt entry removed", level=logging.WARNING, path=str(path), error=str(exc))
            path.unlink(missing_ok=True)
            self._forget(path)
            return None
        self._touch(path, len(data))
        return frames

    def _write(self, key: CacheKey, frames: list[bytes]) -> None:
        path = self._path(key)
        if path is None:
            return
        entry = {"v": _FORMAT, "voice": key.voice, "text": key.text, "rate": key.sample_rate,
                 "frame_ms": key.frame_ms, "language": key.language, "frames": frames}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".msgpack")
            try:
                data = msgpack.packb(entry, use_bin_type=True)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
                with self._lock:
                    self._index(path, len(data))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:  # a full or read-only disk costs the disk tier, not the answer
            log_event(log, "tts cache: write failed", level=logging.WARNING, path=str(path), error=str(exc))
