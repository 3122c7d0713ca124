"""Where a turn is answered: the local model or the cloud, as the escalation policy says.

Failure semantics (the device never hears silence longer than the policy's
first-token timeout):

* the policy keeps the turn local -> local LLM;
* it escalates -> the cloud; if no cloud text arrives within the timeout, or the
  cloud errors, or no worker is reachable, the turn is answered locally after all
  (optionally opening with the cached "let me think" phrase);
* the cloud dies mid-answer -> the local model finishes the answer;
* the turn needs tools (shared.tool_intent) -> the local tool loop, or the cloud
  with the tool definitions: its tool calls run here and their results go back
  to the cloud to continue the same generation.

Every decision (features, rule that fired, revision, where it was answered) goes
to the turn log and to the JSONL trace that `cloud policy dry-run` replays.
"""

from __future__ import annotations

import contextlib
import logging
from typing import AsyncIterator

from edge import metrics
from edge.escalation import CloudHealthMonitor, EscalatedAnswer, EscalationClient, EscalationFailed
from edge.policy_watcher import PolicySnapshot, PolicyWatcher
from edge.tools.registry import ToolError
from edge.tools.site import SiteTools, TurnTools
from edge.turn import AnswerStream, Phrases, TurnRequest, TurnTimer
from shared.chat import ChatClient, ChatDelta
from shared.log import log_event, monotonic_ms
from shared.policy import DEFAULT_POLICY, PolicyState, TurnFeatures
from shared.tool_calling import tool_examples
from shared.topology import EscalationSpec, LlmSpec
from shared.turn_trace import TurnTrace
from shared.wire import EscalationRequest, epoch_ms

log = logging.getLogger("edge.answer")


class LocalAnswer:
    """The local model's streamed answer; can be peeked (first tokens' confidence) before it is spoken."""

    def __init__(self, llm: ChatClient, spec: LlmSpec, messages: list[dict], logprobs: bool = False):
        self._deltas: AsyncIterator[ChatDelta] = llm.stream(
            messages, max_tokens=spec.max_tokens, temperature=spec.temperature, logprobs=logprobs)
        self._buffer: list[str] = []
        self._done = False

    async def confidence(self, tokens: int) -> float | None:
        """Mean log-probability of the first ``tokens`` streamed steps (buffered, spoken later)."""
        logprobs: list[float] = []
        while len(logprobs) < tokens and not self._done:
            try:
                delta = await anext(self._deltas)
            except StopAsyncIteration:
                self._done = True
                break
            if delta.text:
                self._buffer.append(delta.text)
            if delta.logprob is not None:
                logprobs.append(delta.logprob)
        return sum(logprobs) / len(logprobs) if logprobs else None

    async def deltas(self) -> AsyncIterator[str]:
        for text in self._buffer:
            yield text
        self._buffer.clear()
        if self._done:
            return
        async for delta in self._deltas:
            if delta.text:
                yield delta.text

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._deltas.aclose()


class AnswerPlanner:
    """Turns (request, user text, messages) into an AnswerStream; the engine's answer planner."""

    def __init__(self, llm: ChatClient, llm_spec: LlmSpec, spec: EscalationSpec, phrases: Phrases,
                 escalation: EscalationClient | None = None, watcher: PolicyWatcher | None = None,
                 health: CloudHealthMonitor | None = None, trace: TurnTrace | None = None,
                 queue_depth=lambda: 0, tools: SiteTools | None = None):
        self.llm = llm
        self.llm_spec = llm_spec
        self.spec = spec
        self.phrases = phrases
        self.escalation = escalation
        self.watcher = watcher
        self.health = health
        self.trace = trace
        self.queue_depth = queue_depth
        self.tools = tools
        self.state = PolicyState()

    def cloud_healthy(self, model_class: str) -> bool:
        if self.escalation is None or not self.escalation.nc.is_connected:
            return False
        # The monitor follows the class the edge started with; a policy that moved to another
        # class is trusted until its escalations fail (they fall back within the timeout anyway).
        if self.health is None or self.health.model_class != model_class:
            return True
        return self.health.snapshot().available

    def policy(self) -> PolicySnapshot:
        return self.watcher.current() if self.watcher else PolicySnapshot(DEFAULT_POLICY, 0)

    async def __call__(self, req: TurnRequest, user_text: str, messages: list[dict], timer: TurnTimer) -> AnswerStream:
        snapshot = self.policy()  # the turn keeps this revision to its end
        settings = snapshot.policy.settings
        tools = self.tools.for_turn(req, user_text) if self.tools is not None else None
        features = TurnFeatures.from_text(
            user_text, queue_depth=self.queue_depth(), active_turns=int(metrics.ACTIVE_TURNS._value.get()),
            cloud_healthy=self.cloud_healthy(settings.model_class), needs_tools=tools is not None)
        decision = snapshot.evaluate(features, self.state)
        local: LocalAnswer | None = None
        if decision.needs_confidence:
            if self.spec.measure_confidence and tools is None:
                local = LocalAnswer(self.llm, self.llm_spec, messages, logprobs=True)
                features.local_confidence = await local.confidence(settings.confidence_tokens)
            # Not measured (or no logprobs from the backend): treated as confident.
            if features.local_confidence is None:
                features.local_confidence = 0.0
            decision = snapshot.evaluate(features, self.state)

        answered_by, reason = "edge", f"{decision.rule}: {decision.reason}"
        stream: AsyncIterator[str] | None = None
        if decision.escalate and self.escalation is not None:
            metrics.ESCALATIONS.labels(reason=decision.rule).inc()
            request = EscalationRequest(
                turn_id=req.turn_id, device_id=req.device_id, messages=messages, reason=decision.rule,
                policy_revision=decision.revision, deadline=epoch_ms() + self.spec.deadline_ms,
                max_tokens=self.spec.max_tokens, temperature=self.llm_spec.temperature,
                tools=tools.registry.llm_tools() if tools else [],
                tool_examples=tool_examples(tools.registry) if tools else {})
            try:
                cloud = await self._escalate(request, settings)
            except EscalationFailed as exc:
                self._fell_back(exc.cause, exc.detail)
                reason = f"{reason}; cloud failed ({exc.cause}), answered locally"
                if settings.let_me_think:
                    stream = self._prefixed(settings.let_me_think_phrase, self._local(messages, tools, local))
            else:
                if local is not None:
                    await local.aclose()
                answered_by, local = "cloud", None
                stream = self._cloud_answer(request, cloud, tools, settings)
        if stream is None:
            stream = self._local(messages, tools, local)
        if self.trace is not None:
            self.trace.record(features, decision, answered_by, turn_id=req.turn_id, device_id=req.device_id)
        log_event(log, "answer planned", answered_by=answered_by, rule=decision.rule, revision=decision.revision,
                  reason=reason, tools=tools.registry.names() if tools else None)
        return AnswerStream(answered_by, stream, reason)

    async def _escalate(self, request: EscalationRequest, settings) -> EscalatedAnswer:
        started = monotonic_ms()
        cloud = await self.escalation.start(request, first_token_timeout=settings.first_token_timeout_ms / 1000,
                                            model_class=settings.model_class)
        metrics.ESCALATION_FIRST_TOKEN.observe((monotonic_ms() - started) / 1000)
        return cloud

    @staticmethod
    def _fell_back(cause: str, detail: str = "", midstream: bool = False) -> None:
        metrics.CLOUD_FALLBACKS.labels(cause=f"midstream_{cause}" if midstream else cause).inc()
        log_event(log, "cloud failed mid-answer, finishing locally" if midstream else "cloud fallback",
                  logging.WARNING, cause=cause, detail=detail)

    def _local(self, messages: list[dict], tools: TurnTools | None, local: LocalAnswer | None) -> AsyncIterator[str]:
        """The local model's answer: through the tool loop when the turn has tools."""
        if tools is not None:
            return tools.loop.start(messages, tools.registry, tools.ctx).deltas()
        return (local or LocalAnswer(self.llm, self.llm_spec, messages)).deltas()

    @staticmethod
    async def _prefixed(phrase: str, rest: AsyncIterator[str]) -> AsyncIterator[str]:
        yield phrase + " "
        async for text in rest:
            yield text

    async def _cloud_answer(self, request: EscalationRequest, cloud: EscalatedAnswer, tools: TurnTools | None,
                            settings) -> AsyncIterator[str]:
        """The cloud's answer. Tool calls it returns run here (the device is connected to this edge) and their
        results continue the same generation; if the cloud fails, the local model finishes the answer."""
        rounds = tools.loop.max_steps if tools is not None else 1
        for step in range(rounds):
            try:
                async for text in cloud:
                    yield text
            except EscalationFailed as exc:
                self._fell_back(exc.cause, exc.detail, midstream=True)
                async for text in self._finish_locally(request.chat_messages(), cloud.text, tools):
                    yield text
                return
            finally:
                await cloud.aclose()
            calls = cloud.tool_calls
            if not calls or tools is None or cloud.final is None or cloud.final.finish_reason != "tool_calls":
                return
            try:
                results = await tools.loop.execute(calls, tools.registry, tools.ctx)
            except ToolError as exc:
                yield tools.loop.phrases.for_error(exc)
                return
            request = request.continue_with(calls, results, cloud.text)
            request.deadline = epoch_ms() + self.spec.deadline_ms
            if step == rounds - 2:  # like the local loop: the last round offers no tools, so the model answers
                request.tools, request.tool_examples = [], {}
            try:
                cloud = await self._escalate(request, settings)
            except EscalationFailed as exc:  # the tools ran: the local model tells their outcome
                self._fell_back(exc.cause, exc.detail, midstream=True)
                async for text in self._finish_locally(request.chat_messages(), "", tools):
                    yield text
                return
        yield tools.loop.phrases.steps

    async def _finish_locally(self, messages: list[dict], partial: str, tools: TurnTools | None
                              ) -> AsyncIterator[str]:
        """The local model ends an answer the cloud began (its text so far and any tool results)."""
        if partial:
            messages = messages + [{"role": "assistant", "content": partial},
                                   {"role": "user", "content": "Please finish that answer in one short sentence."}]
        if tools is None:
            async for text in LocalAnswer(self.llm, self.llm_spec, messages).deltas():
                yield text
            return
        async for delta in tools.loop.caller.step(messages, None, max_tokens=self.llm_spec.max_tokens,
                                                  temperature=self.llm_spec.temperature):
            if delta.text:
                yield delta.text
