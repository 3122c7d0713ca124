"""What scripts/chaos.py, scripts/soak.py and tests/test_chaos.py share: the embedded stack on its
own ports, and simulated devices talking to it.

``EmbeddedRun`` is the one way they start the stack: a scratch directory, a copy of
topology.yaml on free ports with every file (NATS stores, TTS disk cache, turn trace)
under it (``isolated_topology``), optionally the Consul HTTP double for discovery, the
fault file of shared/faults.py, component logs in files, and the helpers a fault
needs (pids, /health, the stored policy). ``DeviceFleet`` keeps N simulated devices
(scripts/device_sim.py's client, with MCP tools) saying utterances in a loop, or
says one turn on request (tests), and records every turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import numpy as np
import psutil
import yaml

from edge.phrases import UNAVAILABLE_EN
from edge.pipeline.turn import Phrases
from scripts.device_sim import DeviceSimulator, synthesize
from scripts.run_embedded import ROOT, EmbeddedStack
from shared import faults
from shared.nats_conn import connect_nats
from shared.nats_runtime import OPERATOR, free_port
from shared.policy import DEFAULT_POLICY
from shared.policy_store import PolicyStore

# Greetings stay local; the questions escalate under the default policy (hard-question / long-question).
# No word here may look like a tool request (colours, numbers, time): the simulated board's MCP tools
# would turn them into local tool turns.
GREETINGS = ["Hello there.", "Good morning!"]
QUESTIONS = ["Why do cats purr so much?", "Can you explain how airplanes stay up in the air?"]
UTTERANCES = [GREETINGS[0], QUESTIONS[0], GREETINGS[1], QUESTIONS[1]]
# What a failed turn says (the pipeline's cached apology, or "cannot answer" when no model can);
# "Sorry, I didn't catch that." is not one: a model that said nothing is a normal, if poor, turn.
APOLOGIES = (Phrases().error, UNAVAILABLE_EN)
LINGER_S = 0.5  # after tts stop, a device listens this long for stray messages (a second tts start would be a bug)


def _with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{port}"))


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def isolated_topology(scratch: Path, source: Path = ROOT / "topology.yaml", consul_url: str | None = None,
                      overrides: dict | None = None) -> Path:
    """A copy of ``source`` on free ports with its files under ``scratch``; returns its path.
    With ``consul_url``, discovery goes through that Consul agent (the Consul double);
    ``overrides`` are merged into the document first (e.g. shorter answers for tests)."""
    doc = _merge(yaml.safe_load(source.read_text()), overrides or {})
    if consul_url:
        doc["cloud"].setdefault("consul", {})["url"] = consul_url
        doc["discovery"]["backend"] = "consul"
        doc["discovery"]["snapshot_file"] = str(scratch / "discovery-snapshot.json")
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
    edge["llm"]["url"] = _with_port(edge["llm"]["url"], free_port(run=4))  # a port per copy of the model
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
                label = "llama.cpp" if "shared.llama_serve" in cmd else child.name()
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
    stt_ms: float | None = None  # end of speech to the transcript (VAD end of turn + ASR)
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
        """It ended in the apology (a failure mid-answer: after the sentences already spoken)."""
        return self.reply.strip().endswith(APOLOGIES)

    @property
    def question(self) -> bool:
        """Escalated under the default policy (a greeting is answered locally)."""
        return self.utterance in QUESTIONS

    @property
    def fell_back(self) -> bool:
        """A question the cloud should have answered, answered by the edge's own model."""
        return self.question and self.answered_by == "edge"

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
    """N devices talking at once, each in its own loop (``start``): connect, say turns, reconnect if the
    link breaks. Tests drive single turns instead: ``connect(i)`` then ``turn(i, dev, utterance)``."""

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

    async def prepare(self, utterances: list[str] = UTTERANCES) -> None:
        """Synthesize and encode the utterances once (every device sends the same packets)."""
        loop = asyncio.get_running_loop()
        encoder_dev = DeviceSimulator("ws://unused")
        for u in utterances:
            if u not in self._clips:
                self._clips[u] = encoder_dev.encode(np.asarray(await loop.run_in_executor(None, synthesize, u)))

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(i), name=f"device-{i}") for i in range(self.devices)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def drop_next_answer(self, device: int) -> None:
        """Device ``device`` hangs up during its next answer (then reconnects)."""
        self._drop.add(device)

    def reconnect_all(self) -> None:
        """Every device starts a new session (through OTA, i.e. discovery) after its current turn."""
        self._reconnect.update(range(self.devices))

    async def connect(self, index: int, retry: bool = True) -> DeviceSimulator:
        """Device ``index`` runs its OTA check and connects; with ``retry``, until the edge answers."""
        device_id = f"02:00:00:00:{index // 256:02x}:{index % 256:02x}"
        while True:
            try:
                dev = await DeviceSimulator.from_ota(self.ota_url, device_id=device_id,
                                                     turn_timeout_s=self.turn_timeout_s, linger_s=LINGER_S)
                await dev.connect()
                self.sessions += 1
                return dev
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the edge is restarting: try again shortly
                if not retry:
                    raise
                await asyncio.sleep(1.0)

    async def mcp_session(self, index: int, within_s: float = 10.0) -> None:
        """A session that only sets up MCP (the edge initializes and lists the board's tools), then hangs up."""
        dev = await self.connect(index)
        try:
            deadline = time.monotonic() + within_s
            while time.monotonic() < deadline and not any(
                    r.get("method") == "tools/list" for r in dev.mcp_requests):
                await asyncio.sleep(0.05)
        finally:
            await dev.close()

    async def _run(self, index: int) -> None:
        rng = random.Random(index)
        dev = await self.connect(index)
        in_session = 0
        try:
            while True:
                drop = index in self._drop
                self._drop.discard(index)
                rec = await self.turn(index, dev, rng.choice(UTTERANCES), drop=drop)
                in_session += 1
                again = index in self._reconnect
                self._reconnect.discard(index)
                if again or rec.error or rec.dropped or (
                        self.turns_per_session and in_session >= self.turns_per_session):
                    with contextlib.suppress(Exception):
                        await dev.close()
                    dev = await self.connect(index)
                    in_session = 0
                await asyncio.sleep(self.pause_s)
        finally:
            with contextlib.suppress(Exception):
                await dev.close()

    async def turn(self, index: int, dev: DeviceSimulator, utterance: str, drop: bool = False) -> TurnRecord:
        """One turn of device ``index``, recorded; with ``drop`` it hangs up about when the answer starts."""
        packets = self._clips[utterance]
        start = time.monotonic()
        speech_end = start + len(packets) * 0.06
        task = asyncio.ensure_future(dev.run_turn(packets))
        try:
            if drop:
                await self._hang_up_when_answered(dev, task, speech_end)
                rec = TurnRecord(index, utterance, start, speech_end, time.monotonic(), dropped=True)
            else:
                report = await asyncio.wait_for(task, self.turn_timeout_s + 10)
                rec = TurnRecord(index, utterance, start, speech_end, time.monotonic(),
                                 first_audio_ms=report.timings_ms.get("first_audio"),
                                 stt_ms=report.timings_ms.get("stt"), tts_stop=report.tts_stop,
                                 frames=report.frames, reply=report.reply, answered_by=report.answered_by)
        except asyncio.CancelledError:
            task.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - a broken connection is what chaos looks for
            rec = TurnRecord(index, utterance, start, speech_end, time.monotonic(),
                             error=f"{type(exc).__name__}: {exc}"[:200])
        self.records.append(rec)
        return rec

    @staticmethod
    async def _hang_up_when_answered(dev: DeviceSimulator, task: asyncio.Future, speech_end: float) -> None:
        """Close the connection once a few frames of the answer played (or after 20 s without any)."""
        before = dev.frames_received
        deadline = speech_end + 20.0
        while time.monotonic() < deadline and not task.done() and dev.frames_received < before + 3:
            await asyncio.sleep(0.05)
        await dev.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class EmbeddedRun:
    """The embedded stack on free ports in a scratch directory, with what faults and measurements need.

    ``async with EmbeddedRun(consul=True) as run:`` starts the Consul double (discovery reads it),
    then hub, leaf, worker, edge; on exit stops all and removes the scratch directory (``keep``: not).
    """

    def __init__(self, consul: bool = False, overrides: dict | None = None, worker_args: tuple[str, ...] = (),
                 keep: bool = False, prefix: str = "xz-run-"):
        self.scratch = Path(tempfile.mkdtemp(prefix=prefix))
        self.faults_file = self.scratch / "faults"
        self.faults_file.write_text("")
        self.keep = keep
        self.consul: Any = None  # tests/consul_double.py's ConsulDouble when ``consul``
        if consul:
            from tests.consul_double import ConsulDouble  # the only Consul these machines have (see its docstring)

            self.consul = ConsulDouble()
        self.config = isolated_topology(self.scratch, consul_url=self.consul.url if self.consul else None,
                                        overrides=overrides)
        self.events: list[tuple[float, str, str]] = []  # (monotonic, component, state): restarts seen
        self.stack = EmbeddedStack(str(self.config), self.scratch / "embedded",
                                   on_event=lambda state, info: self.events.append(
                                       (time.monotonic(), info["name"], state)),
                                   extra_env={faults.ENV: str(self.faults_file)}, worker_args=worker_args,
                                   log_dir=self.scratch / "logs")

    @property
    def ota_url(self) -> str:
        return f"{self.stack.edge_base}/xiaozhi/ota/"

    async def __aenter__(self) -> "EmbeddedRun":
        if self.consul is not None:
            await self.consul.start()
        try:
            await self.stack.start()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stop()

    async def _stop(self) -> None:
        await self.stack.stop()
        if self.consul is not None:
            await self.consul.stop()
        if not self.keep:
            shutil.rmtree(self.scratch, ignore_errors=True)

    # ------------------------------------------------------------ what a fault needs
    def pid(self, name: str) -> int:
        pid = self.stack.components[name].pid
        if pid is None:
            raise RuntimeError(f"{name} is not running")
        return pid

    def restarts(self, name: str) -> int:
        return self.stack.components[name].restarts

    def worker_name(self) -> str:
        return next(n for n in self.stack.components if n.startswith("worker "))

    def processes(self) -> dict[str, psutil.Process]:
        return stack_processes(self.stack)

    def set_faults(self, *names: str) -> None:
        """Faults of shared/faults.py in force in the edge from now on (none: healed)."""
        self.faults_file.write_text(" ".join(names))

    async def edge_health(self) -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.stack.edge_base}/health", timeout=aiohttp.ClientTimeout(total=3)) as r:
                return await r.json()

    async def edge_metric(self, name: str) -> float | None:
        """One unlabelled sample of the edge's /metrics (None if absent)."""
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.stack.edge_base}/metrics", timeout=aiohttp.ClientTimeout(total=3)) as r:
                text = await r.text()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    async def worker_inflight(self) -> int:
        w = self.stack.topo.cloud.workers[0]
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{w.host}:{w.port}/health", timeout=aiohttp.ClientTimeout(total=2)) as r:
                    return int((await r.json()).get("inflight", 0))
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            return 0

    async def store_policy(self, note: str) -> int:
        """Store the default policy again (as an operator would) and return its JetStream revision."""
        creds = self.stack.security.credentials(OPERATOR)
        nc = await connect_nats(self.stack.hub.url, "xz-chaos", credentials=creds)
        try:
            return await PolicyStore(nc).set(DEFAULT_POLICY, note=note, author="chaos")
        finally:
            await nc.close()

    async def until(self, predicate, within_s: float, every_s: float = 0.2) -> bool:
        """Wait for ``predicate()`` (sync or async) to be true; False after ``within_s``."""
        deadline = time.monotonic() + within_s
        while True:
            value = predicate()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(every_s)
