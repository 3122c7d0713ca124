"""Where a turn is answered: the local model or the cloud, as the escalation policy says.

Failure semantics (the device never hears silence longer than the policy's
first-token timeout):

* the policy keeps the turn local -> local LLM;
* it escalates -> the cloud; if no cloud text arrives within the timeout, or the
  cloud errors, or no worker is reachable, the turn is answered locally after all
  (optionally opening with the cached "let me think" phrase);
* the cloud dies mid-answer -> the local model finishes the answer.

Every decision (features, rule that fired, revision, where it was answered) goes
to the turn log and to the JSONL trace that `cloud policy dry-run` replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

from edge import metrics
from edge.escalation import CloudHealthMonitor, EscalatedAnswer, EscalationClient, EscalationFailed
from edge.policy_watcher import PolicySnapshot, PolicyWatcher
from edge.turn import AnswerStream, Phrases, TurnRequest, TurnTimer
from edge.turn_trace import TurnTrace
from shared.chat import ChatClient, ChatDelta
from shared.log import log_event, monotonic_ms
from shared.policy import DEFAULT_POLICY, PolicyState, TurnFeatures
from shared.topology import EscalationSpec, LlmSpec
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
                 queue_depth=lambda: 0):
        self.llm = llm
        self.llm_spec = llm_spec
        self.spec = spec
        self.phrases = phrases
        self.escalation = escalation
        self.watcher = watcher
        self.health = health
        self.trace = trace
        self.queue_depth = queue_depth
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
        features = TurnFeatures.from_text(
            user_text, queue_depth=self.queue_depth(), active_turns=int(metrics.ACTIVE_TURNS._value.get()),
            cloud_healthy=self.cloud_healthy(settings.model_class))
        decision = snapshot.evaluate(features, self.state)
        local: LocalAnswer | None = None
        if decision.needs_confidence:
            if self.spec.measure_confidence:
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
                max_tokens=self.spec.max_tokens, temperature=self.llm_spec.temperature)
            started = monotonic_ms()
            try:
                cloud = await self.escalation.start(request, first_token_timeout=settings.first_token_timeout_ms / 1000,
                                                    model_class=settings.model_class)
            except EscalationFailed as exc:
                metrics.CLOUD_FALLBACKS.labels(cause=exc.cause).inc()
                log_event(log, "cloud fallback", logging.WARNING, cause=exc.cause, detail=exc.detail)
                reason = f"{reason}; cloud failed ({exc.cause}), answered locally"
                if settings.let_me_think:
                    stream = self._prefixed(settings.let_me_think_phrase, messages, local)
            else:
                metrics.ESCALATION_FIRST_TOKEN.observe((monotonic_ms() - started) / 1000)
                if local is not None:
                    await local.aclose()
                answered_by, local = "cloud", None
                stream = self._cloud_then_local(cloud, messages)
        if stream is None:
            stream = (local or LocalAnswer(self.llm, self.llm_spec, messages)).deltas()
        if self.trace is not None:
            self.trace.record(features, decision, answered_by, turn_id=req.turn_id, device_id=req.device_id)
        log_event(log, "answer planned", answered_by=answered_by, rule=decision.rule, revision=decision.revision,
                  reason=reason)
        return AnswerStream(answered_by, stream, reason)

    async def _prefixed(self, phrase: str, messages: list[dict], local: LocalAnswer | None) -> AsyncIterator[str]:
        yield phrase + " "
        async for text in (local or LocalAnswer(self.llm, self.llm_spec, messages)).deltas():
            yield text

    async def _cloud_then_local(self, cloud: EscalatedAnswer, messages: list[dict]) -> AsyncIterator[str]:
        """The cloud's text; if the cloud dies mid-answer, the local model finishes it."""
        try:
            async for text in cloud:
                yield text
            return
        except EscalationFailed as exc:
            metrics.CLOUD_FALLBACKS.labels(cause=f"midstream_{exc.cause}").inc()
            log_event(log, "cloud failed mid-answer, finishing locally", logging.WARNING, cause=exc.cause)
            partial = cloud.text
        finally:
            await cloud.aclose()
        follow = messages + [{"role": "assistant", "content": partial},
                             {"role": "user", "content": "Please finish that answer in one short sentence."}]
        async for text in LocalAnswer(self.llm, self.llm_spec, follow).deltas():
            yield text
