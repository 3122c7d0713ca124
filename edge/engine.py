"""The edge node's models and turn pipeline, built from topology.yaml.

One engine per edge process, shared by every device session: one VAD session
batched across devices, one ASR queue, one TTS pool with its phrase cache, one
LLM endpoint (a local llama.cpp server in the embedded default), and the
escalation path to the cloud when NATS is configured.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import fields

from edge.asr import AsrService
from edge.tts import TtsService
from edge.turn import AnswerStream, DeviceOutput, Phrases, TurnRequest, TurnResult, TurnRunner, TurnTimer
from edge.vad import VadService
from shared.chat import ChatClient, build_chat_client
from shared.log import log_event
from shared.topology import Topology

log = logging.getLogger("edge.engine")


class EdgeEngine:
    """Loads every model at start(); `ready` turns true once devices can be served."""

    def __init__(self, topology: Topology, site_name: str | None = None):
        self.topology = topology
        self.site = topology.site(site_name)
        self.settings = topology.edge
        self.ready = False
        self.phrases = Phrases()
        self.vad = VadService(self.settings.vad)
        self.asr = AsrService(self.settings.asr)
        self.tts = TtsService(self.settings.tts, self.settings.audio)
        self.llm: ChatClient | None = None
        self._llama = None
        self.turns: TurnRunner | None = None
        self._status: dict[str, str] = {}

    async def start(self) -> None:
        spec = self.settings.llm
        if spec.launch is not None:
            from shared.llama_server import LlamaServer

            self._llama = LlamaServer.for_url(spec.launch, spec.url, alias=spec.model)
            await self._llama.start()
        self.llm = build_chat_client(spec)
        await asyncio.gather(self.vad.load(), self.asr.load(), self.tts.load())
        extra = [getattr(self.phrases, f.name) for f in fields(self.phrases)]
        await self.tts.prewarm(extra)
        self.turns = TurnRunner(self.asr, self.tts, self._plan_local, spec.system_prompt, self.phrases)
        self.ready = True
        log_event(log, "edge engine ready", site=self.site.name)

    async def stop(self) -> None:
        self.ready = False
        if self._llama is not None:
            await self._llama.stop()

    def health(self) -> dict:
        return {"ready": self.ready, "site": self.site.name}

    async def run_turn(self, req: TurnRequest, out: DeviceOutput) -> TurnResult:
        if self.turns is None:
            raise RuntimeError("engine not started")
        return await self.turns.run(req, out)

    async def _plan_local(self, req: TurnRequest, user_text: str, messages: list[dict], timer: TurnTimer) -> AnswerStream:
        return AnswerStream("edge", self._local_deltas(messages), "local")

    async def _local_deltas(self, messages: list[dict]):
        spec = self.settings.llm
        async for delta in self.llm.stream(messages, max_tokens=spec.max_tokens, temperature=spec.temperature):
            if delta.text:
                yield delta.text
