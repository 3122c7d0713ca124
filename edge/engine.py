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
from dataclasses import fields

from edge import metrics
from edge.answer import AnswerPlanner
from edge.asr import AsrService
from edge.tools.config import load_tools_spec
from edge.tools.site import SiteTools
from edge.tts import TtsService
from edge.turn import DeviceOutput, Phrases, TurnRequest, TurnResult, TurnRunner
from edge.vad import VadService
from shared.chat import ChatClient, build_chat_client
from shared.log import log_event
from shared.nats_conn import connect_nats, redact_url
from shared.topology import Topology

log = logging.getLogger("edge.engine")

NATS_RETRY_S = 2.0


class EdgeEngine:
    """Loads every model at start(); `ready` turns true once devices can be served."""

    def __init__(self, topology: Topology, site_name: str | None = None, edge_name: str | None = None):
        self.topology = topology
        self.site = topology.site(site_name)
        self.edge_id = edge_name or self.site.edges[0].name
        self.settings = topology.edge
        self.ready = False
        self.phrases = Phrases()
        self.vad = VadService(self.settings.vad)
        self.asr = AsrService(self.settings.asr)
        self.tts = TtsService(self.settings.tts, self.settings.audio)
        self.llm: ChatClient | None = None
        self.planner: AnswerPlanner | None = None
        self.tools: SiteTools | None = None
        self.turns: TurnRunner | None = None
        self.nc = None
        self._llama = None
        self._cloud: list = []  # escalation pieces to stop: watcher, health monitor, client
        self._nats_task: asyncio.Task | None = None
        self.on_cloud: list = []  # callables given the NATS connection once it is up (device admission watch)
        self._trace = None

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        spec = self.settings.llm
        if spec.launch is not None:
            from shared.llama_server import LlamaServer

            self._llama = LlamaServer.for_url(spec.launch, spec.url, alias=spec.model)
        await asyncio.gather(self.vad.load(), self.asr.load(), self.tts.load(),
                             *([self._llama.start()] if self._llama else []))
        self.llm = build_chat_client(spec)
        await self.tts.prewarm([getattr(self.phrases, f.name) for f in fields(self.phrases)])
        esc = self.settings.escalation
        if esc.trace_path:
            from edge.turn_trace import TurnTrace

            self._trace = TurnTrace(esc.trace_path)
        self.tools = self._site_tools()
        if self.tools is not None:
            await self.tts.prewarm(self.tools.loop.phrases.all())
        self.planner = AnswerPlanner(self.llm, spec, esc, self.phrases, trace=self._trace,
                                     queue_depth=lambda: self.asr.queue_depth, tools=self.tools)
        self.turns = TurnRunner(self.asr, self.tts, self.planner, spec.system_prompt, self.phrases,
                                history_turns=spec.history_turns)
        if esc.enabled:
            self._nats_task = asyncio.create_task(self._connect_cloud(), name="edge-nats")
        self.ready = True
        log_event(log, "edge engine ready", site=self.site.name, edge=self.edge_id)

    def _site_tools(self) -> SiteTools | None:
        """The ``tools:`` section of topology.yaml for this site (None when ``mode: off``)."""
        spec = load_tools_spec(self.topology)
        if spec.mode == "off":
            return None
        llm = self.settings.llm
        kind = "llamacpp" if llm.launch is not None else llm.backend
        return SiteTools(spec, self.site.name, self.llm, kind, llm.max_tokens, llm.temperature)

    async def stop(self) -> None:
        self.ready = False
        if self._nats_task is not None:
            self._nats_task.cancel()
            with contextlib.suppress(BaseException):
                await self._nats_task
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
        if self._llama is not None:
            await self._llama.stop()
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
        self.planner.escalation, self.planner.watcher, self.planner.health = client, watcher, health
        log_event(log, "escalation enabled", nats=redact_url(url), model_class=model_class)

    # ------------------------------------------------------------ serving
    def health(self) -> dict:
        snapshot = self.planner.policy() if self.planner else None
        return {
            "ready": self.ready,
            "site": self.site.name,
            "edge": self.edge_id,
            "cloud_link": bool(self.nc is not None and self.nc.is_connected),
            "policy_revision": snapshot.revision if snapshot else None,
        }

    async def run_turn(self, req: TurnRequest, out: DeviceOutput) -> TurnResult:
        if self.turns is None:
            raise RuntimeError("engine not started")
        return await self.turns.run(req, out)
