"""What scripts/chaos.py and scripts/soak.py share: the embedded stack on its own ports, talking devices.

``isolated_topology`` copies topology.yaml with every port replaced by a free one and
every file (NATS stores, TTS disk cache, turn trace) under a scratch directory, so a
run never collides with `make run`. ``DeviceFleet`` keeps N simulated devices
(scripts/device_sim.py's client) saying utterances in a loop and records every turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psutil
import yaml

from scripts.device_sim import DeviceSimulator, synthesize
from scripts.run_embedded import ROOT, EmbeddedStack
from shared.nats_runtime import free_port

# Greetings stay local; the questions escalate under the default policy (hard-question / long-question).
# No word here may look like a tool request (colours, numbers, time): the simulated board's MCP tools
# would turn them into local tool turns.
UTTERANCES = [
    "Hello there.",
    "Why do cats purr so much?",
    "Good morning!",
    "Can you explain how airplanes stay up in the air?",
]
APOLOGY_PREFIX = "Sorry"


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))


def isolated_topology(scratch: Path, source: Path = ROOT / "topology.yaml", consul_url: str | None = None) -> Path:
    """A copy of ``source`` on free ports with its files under ``scratch``; returns its path.
    With ``consul_url``, discovery goes through that Consul agent (chaos.py's Consul double)."""
    doc = yaml.safe_load(source.read_text())
    if consul_url:
        doc["cloud"].setdefault("consul", {})["url"] = consul_url
        doc["discovery"]["backend"] = "consul"
    for hub in doc["cloud"]["nats"]["hub"]:
        hub["client_port"], hub["leafnode_port"] = free_port(), free_port()
    for worker in doc["cloud"]["workers"]:
        worker["port"] = free_port()
        for backend in worker["backends"]:
            backend["url"] = _with_port(backend["url"], free_port())
    for site in doc["sites"]:
        site["nats_leaf"]["client_port"] = free_port()
        for edge in site["edges"]:
            edge["port"] = free_port()
    edge = doc["edge"]
    edge["llm"]["url"] = _with_port(edge["llm"]["url"], free_port())
    edge.setdefault("trace", {})["path"] = str(scratch / "turns.jsonl")
    cache = edge.get("tts", {}).get("cache")
    if isinstance(cache, dict) and "disk_dir" in cache:
        cache["disk_dir"] = str(scratch / "tts")
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / "topology.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def stack_processes(stack: EmbeddedStack) -> dict[str, psutil.Process]:
    """Every process of the stack by a readable name: components and their children (llama.cpp servers)."""
    out: dict[str, psutil.Process] = {}
    for name, sup in stack.components.items():
        if sup.pid is None:
            continue
        try:
            proc = psutil.Process(sup.pid)
            out[name] = proc
            for child in proc.children(recursive=True):
                cmd = " ".join(child.cmdline())
                label = "llama.cpp" if "llama_cpp.server" in cmd else child.name()
                out[f"{name}/{label}"] = child
        except psutil.NoSuchProcess:
            continue
    return out


@dataclass
class TurnRecord:
    device: int
    utterance: str
    start: float  # monotonic
    speech_end: float
    end: float
    first_audio_ms: float | None = None  # end of speech to first audio, as the device measured it
    tts_stop: bool = False
    frames: int = 0
    reply: str = ""
    answered_by: str | None = None
    error: str | None = None
    dropped: bool = False  # the device hung up on purpose mid-answer

    @property
    def lost(self) -> bool:
        """The device was left hanging: no audio or no ``tts stop`` (and not because it hung up itself)."""
        return not self.dropped and (self.error is not None or not self.tts_stop or self.frames == 0)

    @property
    def apology(self) -> bool:
        return self.reply.startswith(APOLOGY_PREFIX)

    @property
    def normal(self) -> bool:
        return not self.lost and not self.apology and not self.dropped

    @property
    def silence_s(self) -> float:
        """End of speech to first audio (to the end of the turn when no audio came)."""
        if self.first_audio_ms is not None:
            return self.first_audio_ms / 1000.0
        return self.end - self.speech_end


@dataclass
class DeviceFleet:
    """N devices talking at once, each in its own loop: connect, say turns, reconnect if the link breaks."""

    ota_url: str
    devices: int = 5
    turns_per_session: int = 0  # 0: one session for the whole run; else reconnect after that many turns
    pause_s: float = 0.3
    turn_timeout_s: float = 60.0
    records: list[TurnRecord] = field(default_factory=list)
    sessions: int = 0
    _clips: dict[str, list[bytes]] = field(default_factory=dict)
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _drop: set[int] = field(default_factory=set)
    _reconnect: set[int] = field(default_factory=set)
    _paused: bool = False

    async def prepare(self) -> None:
        loop = asyncio.get_running_loop()
        pcm = {u: await loop.run_in_executor(None, synthesize, u) for u in UTTERANCES}
        encoder_dev = DeviceSimulator("ws://unused")
        self._clips = {u: encoder_dev.encode(np.asarray(p)) for u, p in pcm.items()}

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(i), name=f"device-{i}") for i in range(self.devices)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def drop_next_answer(self, device: int) -> None:
        """Device ``device`` hangs up during its next answer (then reconnects)."""
        self._drop.add(device)

    def reconnect_all(self) -> None:
        """Every device starts a new session (through OTA, i.e. discovery) after its current turn."""
        self._reconnect.update(range(self.devices))

    async def _connect(self, index: int) -> DeviceSimulator:
        device_id = f"02:00:00:00:{index // 256:02x}:{index % 256:02x}"
        while True:
            try:
                dev = await DeviceSimulator.from_ota(self.ota_url, device_id=device_id,
                                                     turn_timeout_s=self.turn_timeout_s)
                await dev.connect()
                self.sessions += 1
                return dev
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the edge is restarting: try again shortly
                await asyncio.sleep(1.0)

    async def _run(self, index: int) -> None:
        rng = random.Random(index)
        dev = await self._connect(index)
        in_session = 0
        try:
            while True:
                utterance = rng.choice(UTTERANCES)
                rec = await self._turn(index, dev, utterance)
                self.records.append(rec)
                in_session += 1
                again = index in self._reconnect
                self._reconnect.discard(index)
                if again or rec.error or rec.dropped or (
                        self.turns_per_session and in_session >= self.turns_per_session):
                    with contextlib.suppress(Exception):
                        await dev.close()
                    dev = await self._connect(index)
                    in_session = 0
                await asyncio.sleep(self.pause_s)
        finally:
            with contextlib.suppress(Exception):
                await dev.close()

    async def _turn(self, index: int, dev: DeviceSimulator, utterance: str) -> TurnRecord:
        packets = self._clips[utterance]
        start = time.monotonic()
        speech_end = start + len(packets) * 0.06
        drop = index in self._drop
        if drop:
            self._drop.discard(index)
        task = asyncio.ensure_future(dev.run_turn(packets))
        try:
            if drop:  # hang up about when the answer starts playing
                await asyncio.sleep(len(packets) * 0.06 + 1.2)
                await dev.close()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return TurnRecord(index, utterance, start, speech_end, time.monotonic(), dropped=True)
            report = await asyncio.wait_for(task, self.turn_timeout_s + 10)
        except asyncio.CancelledError:
            task.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - a broken connection is what chaos looks for
            return TurnRecord(index, utterance, start, speech_end, time.monotonic(),
                              error=f"{type(exc).__name__}: {exc}"[:200])
        first = report.timings_ms.get("first_audio")
        return TurnRecord(index, utterance, start, speech_end, time.monotonic(),
                          first_audio_ms=first,
                          tts_stop=report.tts_stop, frames=report.frames, reply=report.reply,
                          answered_by=report.answered_by)
