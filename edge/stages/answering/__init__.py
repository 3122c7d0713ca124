"""Answering: one AnswerSource per way of answering, chosen from the deciding stage's Route.

    local.py      the local model (``LocalAnswer``), with a stall watchdog and its health
    tools.py      the local tool loop (``LocalToolRounds``)
    cloud.py      the cloud stream, its tool rounds and its local finish (``CloudAnswer``)
    fallback.py   cloud first, "let me think" while waiting, local if the cloud fails (``WithFallback``);
                  "let me think" before a slow local answer while the cloud link is down (``Prefaced``)
    phrase.py     a fixed, cached phrase (``PhraseAnswer``)
"""

from __future__ import annotations

from typing import AsyncIterator

from edge import metrics
from edge.cloud_link import CloudLink
from edge.pipeline.ports import AnswerSource
from edge.pipeline.turn import TurnStart
from edge.stages.answering.cloud import CloudAnswer
from edge.stages.answering.fallback import Prefaced, WithFallback
from edge.stages.answering.local import LocalAnswer, LocalHealth, guarded
from edge.stages.answering.tools import LocalToolRounds
from edge.stages.deciding import Route
from edge.tools.site import TurnTools
from shared.chat import ChatClient
from shared.tool_calling import tool_examples
from shared.topology import EscalationSpec, LlmSpec
from shared.wire import EscalationRequest, epoch_ms


class Answering:
    def __init__(self, llm: ChatClient, llm_spec: LlmSpec, spec: EscalationSpec, cloud: CloudLink,
                 health: LocalHealth | None = None):
        self.llm = llm
        self.llm_spec = llm_spec
        self.spec = spec
        self.cloud = cloud
        self.health = health or LocalHealth()
        self.stall_s = llm_spec.stall_timeout_ms / 1000
        self.lead_in_s = spec.lead_in_ms / 1000

    def probe(self, messages: list[dict]) -> LocalAnswer:
        """A local answer asked for log-probabilities (the deciding stage's confidence probe)."""
        return LocalAnswer(self.llm, self.llm_spec, messages, stall_s=self.stall_s, health=self.health, logprobs=True)

    def local(self, messages: list[dict], tools: TurnTools | None = None, reason: str = "") -> AnswerSource:
        if tools is not None:
            return LocalToolRounds(tools, messages, stall_s=self.stall_s, health=self.health, reason=reason)
        return LocalAnswer(self.llm, self.llm_spec, messages, stall_s=self.stall_s, health=self.health, reason=reason)

    def source(self, route: Route, start: TurnStart) -> AnswerSource:
        if route.source != "cloud" or self.cloud.client is None:
            if route.probe is not None:
                route.probe.reason = route.reason
                local = route.probe
            else:
                local = self.local(route.messages, route.tools, route.reason)
            settings = route.settings
            if self.cloud.client is not None and not self.cloud.up and settings.let_me_think:
                return Prefaced(local, settings.let_me_think_phrase, self.lead_in_s)  # partitioned: no long silence
            return local
        decision, settings, tools = route.decision, route.settings, route.tools
        metrics.ESCALATIONS.labels(reason=decision.rule).inc()
        request = EscalationRequest(
            turn_id=start.turn_id, device_id=start.device_id, messages=route.messages, reason=decision.rule,
            policy_revision=decision.revision, deadline=epoch_ms() + self.spec.deadline_ms,
            max_tokens=self.spec.max_tokens, temperature=self.llm_spec.temperature,
            tools=tools.registry.llm_tools() if tools else [],
            tool_examples=tool_examples(tools.registry) if tools else {})
        cloud = CloudAnswer(self.cloud.client, request, settings, self.spec.deadline_ms, tools,
                            lambda msgs: self._finish(msgs, tools))
        return WithFallback(cloud, lambda: route.probe or self.local(route.messages, tools),
                            settings.let_me_think_phrase if settings.let_me_think else None, self.lead_in_s,
                            route.reason, probe=route.probe)

    def _finish(self, messages: list[dict], tools: TurnTools | None) -> AsyncIterator[str]:
        """The local model's text for ``messages``, offering no tools (it finishes what the cloud began)."""
        if tools is None:
            return LocalAnswer(self.llm, self.llm_spec, messages, stall_s=self.stall_s, health=self.health).stream()
        return guarded(tools.loop.answer_only(messages), self.stall_s, "local model", self.health)
