"""The edge node's models and turn pipeline, built from topology.yaml.

One engine per edge process, shared by every device session: one VAD session
batched across devices, one ASR queue, one TTS pool with its phrase cache, one
LLM endpoint (a local llama.cpp server in the embedded default), and the
escalation path to the cloud over the site's NATS leaf node.

The edge never depends on the cloud to serve: NATS is connected in the
background (and reconnected forever); until then, and whenever the link is
down, every turn is answered locally.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import asdict, fields
from pathlib import Path

from edge import metrics
from edge.admission import AdmissionControl, CountedChat, InflightCounter
from edge.asr import AsrService
from edge.cloud_link import CloudLink
from edge.loop_watch import LoopWatch
from edge.phrases import UNAVAILABLE_EN
from edge.pipeline.observers import Observer, TraceObserver
from edge.pipeline.ports import DeviceOutput
from edge.pipeline.turn import Phrases, TurnPipeline, TurnResult, TurnStart
from edge.stages.answering import Answering
from edge.stages.answering.local import LocalHealth
from edge.stages.answering.phrase import PhraseAnswer
from edge.stages.deciding import Deciding
from edge.stages.listening import Listening
from edge.stages.speaking import Speaking
from edge.stages.understanding import Understanding
from edge.threads import apply_budget, edge_budget
from edge.tools.site import SiteTools
from edge.tts import TtsService
from edge.vad import VadService
from shared.chat import ChatClient, PooledChat, build_chat_client, import_client_library
from shared.log import log_event
from shared.intent_router import IntentRouter
from shared.nats_conn import connect_nats, redact_url
from shared.policy import DEFAULT_POLICY
from shared.topology import Topology

log = logging.getLogger("edge.engine")

NATS_RETRY_S = 2.0


def build_pipeline(tts, llm: ChatClient, settings, phrases: Phrases, cloud: CloudLink, *,
                   tools: SiteTools | None = None, health: LocalHealth | None = None, router: IntentRouter | None = None,
                   queue_depth=lambda: 0, local_available=lambda: True, observers=lambda start: [],
                   admission: AdmissionControl | None = None, local_busy=lambda: False) -> TurnPipeline:
    """The turn's stages wired together (the engine's, and the session tests' with stand-in models)."""
    answering = Answering(llm, settings.llm, settings.escalation, cloud, health, local_busy=local_busy)
    deciding = Deciding(settings.escalation, cloud, answering.probe, tools, queue_depth,
                        active_turns=lambda: pipeline.active, local_available=local_available,
                        local_languages=settings.llm.languages, router=router, router_spec=settings.router,
                        declined=phrases.declined)
    pipeline = TurnPipeline(
        Understanding(), deciding, answering,
        Speaking(tts, phrases.no_answer, phrases.hold, settings.session.hold_after_ms / 1000,
                 max_sentences={"edge": settings.llm.max_sentences, "cloud": settings.escalation.max_sentences},
                 local_busy=local_busy),
        phrases,
        greeting=lambda language: PhraseAnswer(phrases.said_in("greeting", language), "wake word"),
        system_prompt=settings.llm.system_prompt, observers=observers, admission=admission,
        answer_deadline_s=settings.session.answer_deadline_s)
    return pipeline


class EdgeEngine:
    """Loads every model at start(); `ready` turns true once devices can be served."""

    def __init__(self, topology: Topology, site_name: str | None = None, edge_name: str | None = None):
        self.topology = topology
        self.site = topology.site(site_name)
        self.edge_id = edge_name or self.site.edges[0].name
        host = next((e for e in self.site.edges if e.name == self.edge_id), self.site.edges[0])
        self.tier, budget = edge_budget(topology, self.site, host)
        self.settings, self.threads = apply_budget(topology.edge, budget)
        self.ready = False
        self.phrases = Phrases()
        self.vad = VadService(self.settings.vad, threads=self.threads.vad)
        self.asr = AsrService(self.settings.asr)
        self.tts = TtsService(self.settings.tts, self.settings.audio, threads=self.threads.tts)
        self.cloud = CloudLink()
        self.llm_health = LocalHealth()
        self.llm: ChatClient | None = None
        self.sessions: set = set()  # open device sessions (the server keeps them here; admission counts them)
        self.llm_inflight = InflightCounter()  # local generations streaming now
        self.admission = AdmissionControl.for_edge(
            host.capacity, self.settings.admission, self.asr, lambda: self.pipeline.active if self.pipeline else 0,
            lambda: len(self.sessions), self.llm_inflight, self._cloud_healthy,
        ) if self.settings.admission.enabled else None
        self.tools: SiteTools | None = None
        self.router: IntentRouter | None = None
        self.pipeline: TurnPipeline | None = None
        self.nc = None
        self._llamas: list = []  # the launched llama.cpp servers (edge.threads.llm_servers of them), if any
        self._cloud: list = []  # escalation pieces to stop: watcher, health monitor, client
        self._nats_task: asyncio.Task | None = None
        self._lag_task: asyncio.Task | None = None
        self.loop_watch = LoopWatch()  # the event loop's lag, and its stack when it is stuck
        self.on_cloud: list = []  # callables given the NATS connection once it is up (device admission watch)
        self._trace = None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        log_event(log, "thread budget", tier=self.tier or "auto", **self.threads.as_dict())
        self._lag_task = asyncio.create_task(self.loop_watch.run(), name="loop-watch")
        spec = self.settings.llm
        if spec.launch is not None:
            from shared.llama_server import LlamaServer

            launch = spec.launch
            if self.settings.escalation.measure_confidence:  # the confidence probe reads log-probabilities
                launch = launch.model_copy(update={"logprobs": True})
            self._llamas = LlamaServer.copies(launch, spec.url, spec.model, self.threads.llm_servers)
        routing = asyncio.to_thread(self._load_router)
        *_, self.router = await asyncio.gather(self.vad.load(), self.asr.load(), self.tts.load(),
                                               *(server.start() for server in self._llamas),
                                               asyncio.to_thread(import_client_library), routing)
        self.llm = CountedChat(self._chat_client(), self.llm_inflight)
        await self.tts.prewarm([getattr(self.phrases, f.name) for f in fields(self.phrases)]
                               + [r.phrase for r in DEFAULT_POLICY.rules if r.phrase] + [UNAVAILABLE_EN])
        esc = self.settings.escalation
        if self.settings.trace.path:
            from shared.turn_trace import TurnTrace

            self._trace = TurnTrace.from_spec(self.settings.trace)
        self.tools = self._site_tools()
        if self.tools is not None:
            await self.tts.prewarm(self.tools.loop.phrases.all())
        self.pipeline = build_pipeline(self.tts, self.llm, self.settings, self.phrases, self.cloud, tools=self.tools,
                                       health=self.llm_health, router=self.router, queue_depth=lambda: self.asr.queue_depth,
                                       local_available=lambda: self.llm_process_alive() and self.llm_health.ok,
                                       observers=self._observers, admission=self.admission,
                                       local_busy=self._local_busy)
        if esc.enabled:
            self._nats_task = asyncio.create_task(self._connect_cloud(), name="edge-nats")
        self.ready = True
        log_event(log, "edge engine ready", site=self.site.name, edge=self.edge_id,
                  admission=asdict(self.admission.limits) if self.admission else "off")

    def _chat_client(self) -> ChatClient | PooledChat:
        """The local model's client: one per launched server, spread by load (shared.chat.PooledChat)."""
        spec = self.settings.llm
        if len(self._llamas) <= 1:
            return build_chat_client(spec)
        servers = self._llamas
        return PooledChat([build_chat_client(spec.model_copy(update={"url": s.base_url})) for s in servers],
                          usable=lambda i: servers[i].available)

    def _observers(self, start: TurnStart) -> list[Observer]:
        return [TraceObserver(self._trace, start.device_id)] if self._trace is not None else []
    def _load_router(self) -> IntentRouter | None:
        """MiniLM and the example sets, embedded once (a second or two, in a thread); None when turned off."""
        spec = self.settings.router
        if not spec.enabled:
            return None
        from shared.embeddings import shared_embedder
        from shared.intent_router import RouterConfig
        from shared.small_talk import BOOK_FILE, SmallTalkBook

        embedder = shared_embedder()
        book = SmallTalkBook(embedder, Path(spec.small_talk_file or BOOK_FILE), spec.small_talk_min_score) \
            if spec.small_talk else None
        router = IntentRouter(embedder, RouterConfig(clear_margin=spec.clear_margin, weak_margin=spec.weak_margin,
                                                     min_score=spec.min_score), small_talk=book)
        log_event(log, "intent router ready", languages=spec.languages)
        return router

    def _site_tools(self) -> SiteTools | None:
        """The ``tools:`` section of topology.yaml for this site (None when ``mode: off``)."""
        spec = self.topology.tools
        if spec.mode == "off":
            return None
        llm = self.settings.llm
        kind = "llamacpp" if llm.launch is not None else llm.backend
        return SiteTools(spec, self.site.name, self.llm, kind, llm.max_tokens, llm.temperature, router=self.router)

    async def stop(self) -> None:
        self.ready = False
        for task in (self._nats_task, self._lag_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        for part in reversed(self._cloud):
            with contextlib.suppress(Exception):
                await (part.stop() if hasattr(part, "stop") else part.close())
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
        if self._trace is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._trace.close)
        if self.llm is not None:
            await self.llm.aclose()
        for server in self._llamas:
            await server.stop()
        self.asr.close()
        self.tts.close()

    async def _connect_cloud(self) -> None:
        """Connect to the site's leaf node (retrying until it answers), then enable escalation."""
        from edge.escalation import CloudHealthMonitor, EscalationClient
        from edge.policy_watcher import PolicyWatcher

        url = self.settings.escalation.nats_url or self.topology.leaf_url(self.site.name)
        while self.nc is None:
            try:
                self.nc = await connect_nats(url, f"xz-edge-{self.edge_id}", connect_timeout_s=5,
                                             on_change=lambda up: metrics.CLOUD_LINK_UP.set(int(up)),
                                             inbox_prefix=f"_INBOX.{self.site.name}")
            except Exception as exc:  # noqa: BLE001 - any connect failure means: local only, retry later
                metrics.CLOUD_LINK_UP.set(0)
                log_event(log, "NATS unreachable, answering locally", logging.WARNING, url=redact_url(url),
                          error=str(exc))
                await asyncio.sleep(NATS_RETRY_S)
        watcher = await PolicyWatcher(self.nc).start()
        model_class = watcher.current().policy.settings.model_class
        health = CloudHealthMonitor(self.nc, model_class)
        await health.start()
        client = EscalationClient(self.nc, self.edge_id, self.site.name, model_class=model_class)
        self._cloud = [client, health, watcher]
        for hook in self.on_cloud:
            hook(self.nc)
        self.cloud.attach(client, watcher, health)
        log_event(log, "escalation enabled", nats=redact_url(url), model_class=model_class)

    # ------------------------------------------------------------ serving
    def _cloud_healthy(self) -> bool:
        """Worth escalating to for load: the link is up and a worker of the policy's class has room."""
        return self.cloud.healthy(self.cloud.policy().policy.settings.model_class)

    def _local_busy(self) -> bool:
        """Every launched llama.cpp server (one generation each) has a generation in flight: a new one queues or
        shares the cores with them. An external model's slots are unknown: never."""
        return bool(self._llamas) and self.llm_inflight.value >= len(self._llamas)

    def llm_process_alive(self) -> bool:
        """A launched llama.cpp server is running (True when the LLM is external: its calls tell)."""
        if not self._llamas:
            return True
        return any(s.available for s in self._llamas)  # the supervisors' view: False while crashed or restarting

    def components(self) -> dict[str, bool]:
        """Per component: can it do its part right now?"""
        return {
            "vad": self.vad.loaded,
            "asr": self.asr.backend is not None,
            "llm": self.llm is not None and self.llm_process_alive() and self.llm_health.ok,
            "tts": self.tts.primary is not None,
            "cloud_link": self.cloud.up,
        }

    def can_answer(self, parts: dict[str, bool]) -> bool:
        """Some answer is possible: hearing works, and the local model or the cloud can answer, and speech works."""
        return self.ready and parts["vad"] and parts["asr"] and parts["tts"] and (parts["llm"] or parts["cloud_link"])

    def health(self) -> dict:
        parts = self.components()
        snapshot = self.cloud.policy() if self.ready else None
        return {
            "ready": self.ready,
            "can_answer": self.can_answer(parts),
            "components": {name: "up" if ok else "down" for name, ok in parts.items()},
            "site": self.site.name,
            "edge": self.edge_id,
            "cloud_link": parts["cloud_link"],
            # would a turn be escalated now: the link is up and a worker of the policy's class has room
            "cloud_healthy": bool(snapshot and self.cloud.healthy(snapshot.policy.settings.model_class)),
            "active_turns": self.pipeline.active if self.pipeline else 0,
            **({"load": self.admission.snapshot()} if self.admission else {}),
            "loop_lag_ms": round(self.loop_watch.last_lag_s * 1000, 1),
            "policy_revision": snapshot.revision if snapshot else None,
            **({"llm_error": self.llm_health.error} if not self.llm_health.ok else {}),
        }

    def listening(self, mode: str) -> Listening:
        spec = self.settings.vad
        return Listening(self.vad, self.asr, mode, spec.early_commit_ms, spec.unfinished_silence_ms)

    async def run_turn(self, start: TurnStart, out: DeviceOutput) -> TurnResult:
        if self.pipeline is None:
            raise RuntimeError("engine not started")
        return await self.pipeline.run(start, out)
