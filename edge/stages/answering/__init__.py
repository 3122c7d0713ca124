"""Answering: one AnswerSource per way of answering, chosen from the deciding stage's Route.

    local.py      the local model (``LocalAnswer``), with a stall watchdog and its health
    tools.py      the local tool loop (``LocalToolRounds``)
    cloud.py      the cloud stream, its tool rounds and its local finish (``CloudAnswer``)
    fallback.py   cloud first, "let me think" while waiting, local if the cloud fails (``WithFallback``);
                  "let me think" before a slow local answer while the cloud link is down (``Prefaced``)
    phrase.py     a fixed, cached phrase (``PhraseAnswer``): policy phrases, confirmation questions
    checked.py    the local model's first sentence checked before it is spoken (``CheckedAnswer``)
"""

from __future__ import annotations

from typing import AsyncIterator, Callable

from edge import metrics
from edge.cloud_link import CloudLink
from edge.phrases import UNAVAILABLE_EN, localized
from edge.pipeline.ports import AnswerSource
from edge.pipeline.turn import TurnStart
from edge.stages.answering.checked import CheckedAnswer
from edge.stages.answering.cloud import CloudAnswer
from edge.stages.answering.fallback import CloudPace, Prefaced, WithFallback
from edge.stages.answering.local import LocalAnswer, LocalHealth, guarded
from edge.stages.answering.phrase import PhraseAnswer
from edge.stages.answering.tools import LocalToolRounds
from edge.stages.deciding import Route
from edge.tools.site import TurnTools
from shared.chat import ChatClient
from shared.tool_calling import tool_examples
from shared.topology import EscalationSpec, LlmSpec
from shared.wire import EscalationRequest, ToolCall, epoch_ms


# The lead-in's wait for an escalated answer on a loaded edge: its first sentence will synthesize slowly on a busy
# CPU even when the cloud's text comes in time (measured at 75 devices: 0.5-0.7 s after the text), so the phrase
# comes sooner instead of after edge.escalation.lead_in_ms of silence.
LOADED_LEAD_IN_S = 0.15


class Answering:
    def __init__(self, llm: ChatClient, llm_spec: LlmSpec, spec: EscalationSpec, cloud: CloudLink,
                 health: LocalHealth | None = None, local_busy: Callable[[], bool] = lambda: False):
        self.llm = llm
        self.llm_spec = llm_spec
        self.spec = spec
        self.cloud = cloud
        self.health = health or LocalHealth()
        self.stall_s = llm_spec.stall_timeout_ms / 1000
        self.queue_s = llm_spec.queue_timeout_ms / 1000
        self.lead_in_s = spec.lead_in_ms / 1000
        self.cloud_pace = CloudPace()  # the lead-in at once when the cloud is known to take longer
        self.local_busy = local_busy  # every slot of the local model is taken: the edge is loaded

    def probe(self, messages: list[dict]) -> LocalAnswer:
        """A local answer asked for log-probabilities (the deciding stage's confidence probe)."""
        return LocalAnswer(self.llm, self.llm_spec, messages, stall_s=self.stall_s, health=self.health, logprobs=True)

    def local(self, messages: list[dict], tools: TurnTools | None = None, reason: str = "",
              calls: list[ToolCall] | None = None) -> AnswerSource:
        if tools is not None:
            return LocalToolRounds(tools, messages, stall_s=self.stall_s, health=self.health, reason=reason,
                                   decided=calls, queue_s=self.queue_s)
        return LocalAnswer(self.llm, self.llm_spec, messages, stall_s=self.stall_s, health=self.health, reason=reason)

    def source(self, route: Route, start: TurnStart) -> AnswerSource:
        if route.phrase is not None:
            return PhraseAnswer(route.phrase, route.reason, answered_by="edge" if route.small_talk else "cache")
        if route.source != "cloud" or self.cloud.client is None:
            local = self._local(route, start)
            settings = route.settings
            if self.cloud.client is not None and not self.cloud.up and settings.let_me_think:  # partitioned
                lead_in = localized("thinking", route.language, settings.let_me_think_phrase)
                return Prefaced(local, lead_in, self.lead_in_s)  # no long silence before a slow local answer
            return local
        return self._escalated(route, start, lambda: self._local(route))

    def _escalated(self, route: Route, start: TurnStart, fallback: Callable[[], AnswerSource],
                   reason: str | None = None) -> AnswerSource:
        """The cloud's answer, with the lead-in phrase while waiting and ``fallback`` if it fails."""
        decision, settings, tools = route.decision, route.settings, route.tools
        reason = reason or decision.rule
        metrics.ESCALATIONS.labels(reason=reason).inc()
        request = EscalationRequest(
            turn_id=start.turn_id, device_id=start.device_id, messages=route.messages, reason=reason,
            language=route.language, policy_revision=decision.revision, deadline=epoch_ms() + self.spec.deadline_ms,
            max_tokens=self.spec.max_tokens, temperature=self.llm_spec.temperature,
            tools=tools.registry.llm_tools() if tools else [],
            tool_examples=tool_examples(tools.registry) if tools else {})
        assert self.cloud.client is not None
        cloud = CloudAnswer(self.cloud.client, request, settings, self.spec.deadline_ms, tools,
                            lambda msgs: self._finish(msgs, tools, route))
        lead_in = localized("thinking", route.language, settings.let_me_think_phrase) if settings.let_me_think else None
        return WithFallback(cloud, fallback, lead_in, self.lead_in_s, route.reason, probe=route.probe,
                            pace=self.cloud_pace, max_wait_s=LOADED_LEAD_IN_S if self.local_busy() else None)

    def _local(self, route: Route, start: TurnStart | None = None) -> AnswerSource:
        """The edge's answer: the probe's or a new one, its first sentence checked (a failing one is replaced by
        the cloud when ``start`` is given and the cloud is healthy, else by the phrase); in a language the local
        model lacks, the cached phrase saying so in that language (SmolLM2 would answer Mandarin with nonsense)."""
        if not route.local_language:
            return self._unavailable(route.language, route.reason)
        if route.probe is not None:
            route.probe.reason = route.reason
        local = route.probe or self.local(route.messages, route.tools, route.reason, route.calls)
        if route.tools is not None:  # tool results are the device's own words: not checked
            return local
        return CheckedAnswer(local, route.messages[-1]["content"], route.language,
                             lambda: self._replacement(route, start))

    def _replacement(self, route: Route, start: TurnStart | None) -> AnswerSource:
        """For a local answer that failed the check: the cloud when it is healthy, else the honest phrase."""
        phrase = lambda: self._unavailable(route.language, f"{route.reason}; answer check")  # noqa: E731
        if start is None or self.cloud.client is None or not self.cloud.healthy(route.settings.model_class):
            return phrase()
        return self._escalated(route, start, phrase, reason="answer-check")

    @staticmethod
    def _unavailable(language: str, reason: str = "") -> PhraseAnswer:
        return PhraseAnswer(localized("unavailable", language, UNAVAILABLE_EN), reason, answered_by="edge")

    def _finish(self, messages: list[dict], tools: TurnTools | None, route: Route) -> AsyncIterator[str]:
        """The local model's text for ``messages``, offering no tools (it finishes what the cloud began)."""
        if not route.local_language:
            return self._unavailable(route.language).stream()
        if tools is None:
            return LocalAnswer(self.llm, self.llm_spec, messages, stall_s=self.stall_s, health=self.health).stream()
        return guarded(tools.loop.answer_only(messages), self.stall_s, "local model", self.health, queue_s=self.queue_s)
