"""Deciding: where a turn is answered (the local model or the cloud), as the escalation policy says.

The policy (a revision from NATS KV, or the built-in default) looks at the
turn's features: its text and language, whether it needs tools
(:mod:`shared.tool_intent`), the edge's load, whether the cloud is healthy, and
(when a rule asks) the local model's confidence on its first tokens. That probe
is a started local answer, handed on in the :class:`Route` so no token is
generated twice. A turn the policy would escalate while the cloud link is known
to be down is answered locally at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from edge.cloud_link import CloudLink
from edge.pipeline.events import Decided
from edge.pipeline.observers import TurnEvents
from edge.pipeline.turn import TurnStart
from edge.stages.answering.local import LocalAnswer
from edge.stages.understanding import Heard
from edge.tools.site import SiteTools, TurnTools
from shared.policy import Decision, PolicyState, Settings, TurnFeatures, local_language
from shared.topology import EscalationSpec


@dataclass
class Route:
    source: Literal["edge", "cloud"]
    reason: str
    decision: Decision
    settings: Settings
    messages: list[dict]
    tools: TurnTools | None = None
    probe: LocalAnswer | None = None  # the confidence probe's started local answer
    language: str = "en"  # the turn's (the escalation request's, the phrases')
    local_language: bool = True  # the local model answers in it (else a local answer is the phrase for that)


class Deciding:
    def __init__(self, spec: EscalationSpec, cloud: CloudLink, probe: Callable[[list[dict]], LocalAnswer],
                 tools: SiteTools | None = None, queue_depth: Callable[[], int] = lambda: 0,
                 active_turns: Callable[[], int] = lambda: 0, local_available: Callable[[], bool] = lambda: True,
                 local_languages: Sequence[str] = ("en",)):
        self.spec = spec
        self.local_languages = tuple(local_languages)  # what the local model answers in (edge.llm.languages)
        self.local_available = local_available  # the local model serves (not crashed, restarting or failing)
        self.cloud = cloud
        self.probe = probe
        self.tools = tools
        self.queue_depth = queue_depth
        self.active_turns = active_turns
        self.state = PolicyState()

    async def run(self, start: TurnStart, heard: Heard, messages: list[dict], events: TurnEvents) -> Route:
        snapshot = self.cloud.policy()  # the turn keeps this revision to its end
        settings = snapshot.policy.settings
        tools = self.tools.for_turn(start, heard.text) if self.tools is not None else None
        healthy = self.cloud.healthy(settings.model_class)
        features = TurnFeatures.from_text(
            heard.text, language=heard.language or "en", queue_depth=self.queue_depth(),
            active_turns=self.active_turns(), cloud_healthy=healthy, needs_tools=tools is not None,
            local_available=self.local_available(),
            local_language=local_language(heard.language, self.local_languages))
        decision = snapshot.evaluate(features, self.state)
        probe: LocalAnswer | None = None
        if decision.needs_confidence:
            if self.spec.measure_confidence and tools is None and features.local_language:
                probe = self.probe(messages)
                features.local_confidence = await probe.confidence(settings.confidence_tokens)
            # Not measured (or no logprobs from the backend): treated as confident.
            if features.local_confidence is None:
                features.local_confidence = 0.0
            decision = snapshot.evaluate(features, self.state)
        reason = f"{decision.rule}: {decision.reason}"
        source: Literal["edge", "cloud"] = "edge"
        if decision.escalate:
            if healthy and self.cloud.client is not None:
                source = "cloud"
            else:
                reason += "; cloud link down, answered locally"
        events.emit(Decided(source=source, rule=decision.rule, reason=reason, revision=decision.revision,
                            features=features, decision=decision,
                            tools=tuple(tools.registry.names()) if tools else None))
        return Route(source, reason, decision, settings, messages, tools, probe, features.language,
                     features.local_language)
