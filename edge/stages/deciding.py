"""Deciding: how a turn is answered (the local model, its tools, the cloud, or a fixed phrase), as the policy says.

One embedding per turn (the router, :mod:`shared.intent_router`, off the event
loop) gives the request's intent class and whether it wants a tool. The policy
(a revision from NATS KV, or the built-in default) then looks at the turn's
features: its text, language and intent, whether it needs tools, the edge's load,
whether the cloud is healthy, and (when a rule asks) the local model's confidence
on its first tokens. That probe is a started local answer, handed on in the
:class:`Route` so no token is generated twice. A turn the policy would escalate
while the cloud link is known to be down is answered locally at once.

Small talk kept local ("thanks!", "who are you?") is answered from the router's
small-talk book (:mod:`shared.small_talk`) when one of its entries matches.

Tool turns kept local are decided here too (:mod:`shared.routed_tools`): call
now, or ask first ("Set the light to blue?") and keep the call pending for the
next turn's yes; a turn scored as chat never calls anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Literal, Sequence

from edge.cloud_link import CloudLink
from edge.pipeline.events import Decided
from edge.pipeline.observers import TurnEvents
from edge.phrases import localized
from edge.pipeline.turn import TurnStart
from edge.stages.understanding import Heard
from edge.tools.site import SiteTools, TurnTools
from shared.intent_router import IntentRouter, RouteDecision
from shared.languages import primary_subtag
from shared.policy import Decision, PolicyState, Settings, TurnFeatures, local_language
from shared.tool_calling import llm_name
from shared.tool_decision import PendingCall, is_bare_reply, is_no
from shared.topology import EscalationSpec, RouterSpec
from shared.wire import ToolCall, new_id

if TYPE_CHECKING:  # the answering stage consumes a Route: importing it here would be a cycle
    from edge.stages.answering.local import LocalAnswer

MCP_WAIT_S = 1.0  # how long a turn waits for the device's tools/list before deciding without its tools


@dataclass
class Route:
    source: Literal["edge", "cloud"]
    reason: str
    decision: Decision
    settings: Settings
    messages: list[dict]
    tools: TurnTools | None = None
    probe: LocalAnswer | None = None  # the confidence probe's started local answer
    phrase: str | None = None  # say this fixed (cached) phrase and nothing else
    calls: list[ToolCall] = field(default_factory=list)  # tool calls decided before any model round
    pending: PendingCall | None = None  # a call waiting for the next turn's yes (the phrase asks)
    language: str = "en"  # the turn's (the escalation request's, the phrases')
    local_language: bool = True  # the local model answers in it (else a local answer is the phrase for that)
    small_talk: str | None = None  # the small-talk book's entry whose reply ``phrase`` is (the edge answered)


class Deciding:
    def __init__(self, spec: EscalationSpec, cloud: CloudLink, probe: Callable[[list[dict]], LocalAnswer],
                 tools: SiteTools | None = None, queue_depth: Callable[[], int] = lambda: 0,
                 active_turns: Callable[[], int] = lambda: 0, local_available: Callable[[], bool] = lambda: True,
                 local_languages: Sequence[str] = ("en",), router: IntentRouter | None = None,
                 router_spec: RouterSpec = RouterSpec(), declined: str = "Okay, I won't."):
        self.spec = spec
        self.local_languages = tuple(local_languages)  # what the local model answers in (edge.llm.languages)
        self.local_available = local_available  # the local model serves (not crashed, restarting or failing)
        self.cloud = cloud
        self.probe = probe
        self.tools = tools
        self.queue_depth = queue_depth
        self.active_turns = active_turns
        self.router = router
        self.router_spec = router_spec
        self.declined = declined  # said to a "no" after a confirmation question
        self.state = PolicyState()

    async def run(self, start: TurnStart, heard: Heard, messages: list[dict], events: TurnEvents) -> Route:
        snapshot = self.cloud.policy()  # the turn keeps this revision to its end
        settings = snapshot.policy.settings
        language = heard.language or "en"
        healthy = self.cloud.healthy(settings.model_class)
        base = dict(language=language, queue_depth=self.queue_depth(), active_turns=self.active_turns(),
                    cloud_healthy=healthy, local_available=self.local_available(), over_capacity=start.over_capacity,
                    local_language=local_language(heard.language, self.local_languages))
        if start.pending is not None and not start.pending.expired():
            answered = self._answer_to_question(start, heard, messages, settings, snapshot.revision, base, events)
            if answered is not None:
                return answered
        routed = await self._route(heard.text, language, start)
        tools = self._tools(start, heard, language, routed)
        features = TurnFeatures.from_text(heard.text, needs_tools=tools is not None,
                                          intent=routed.intent if routed else None, **base)
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
        route = Route("edge", reason, decision, settings, messages, tools, probe, language=language,
                      local_language=features.local_language)
        if decision.phrase is not None:
            route.phrase, route.tools = decision.phrase, None
        elif decision.escalate:
            if healthy and self.cloud.client is not None:
                route.source = "cloud"
            else:
                route.reason += "; cloud link down, answered locally"
        if route.source == "edge" and route.tools is not None and routed is not None:
            await self._decide_tool(route, routed)
        if route.source == "edge" and route.phrase is None and route.tools is None and routed is not None:
            self._small_talk(route, routed)
        events.emit(Decided(source=route.source, rule=decision.rule, reason=route.reason, revision=decision.revision,
                            features=features, decision=decision,
                            tools=tuple(route.tools.registry.names()) if route.tools else None))
        return route

    async def _route(self, text: str, language: str, start: TurnStart) -> RouteDecision | None:
        """The router's decision (one embedding, in a thread); None without a router or in another language."""
        if self.router is None or primary_subtag(language) not in self.router_spec.languages:
            return None
        mcp = start.mcp
        if mcp is not None and not mcp.settled.is_set():  # a request right after hello: tools/list is on the way
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(mcp.settled.wait(), MCP_WAIT_S)
        registry = self.tools.registry_for(start) if self.tools is not None else None
        return await asyncio.to_thread(self.router.route, text, registry)

    def _tools(self, start: TurnStart, heard: Heard, language: str, routed: RouteDecision | None) -> TurnTools | None:
        if self.tools is None or is_bare_reply(heard.text):
            return None  # "yes please" with no question pending (or a late one) asks for nothing
        if self.router is not None and routed is None:  # a language the router does not know: the cloud decides
            return self.tools.offered(start)
        return self.tools.for_turn(start, heard.text, routed)

    def _small_talk(self, route: Route, routed: RouteDecision) -> None:
        """"Thanks!", "who are you?": the book's reply instead of a model round (shared.small_talk)."""
        book = self.router.small_talk if self.router is not None else None
        reply = book.reply(routed.small_talk, route.language) if book is not None and routed.small_talk else None
        if reply is not None:
            route.phrase, route.small_talk = reply, routed.small_talk
            route.reason += f"; small talk: {routed.small_talk}"

    async def _decide_tool(self, route: Route, routed: RouteDecision) -> None:
        """A local tool turn: call now, ask first, or no tool after all (shared.tool_decision's rule)."""
        routed_caller = self.tools.routed if self.tools is not None else None
        if route.tools is None or routed_caller is None:  # a native tool caller decides in its own model rounds
            return
        turn = await routed_caller.decide(route.messages, route.tools.registry, route=routed)
        route.reason += f"; tool {turn.outcome}: {turn.reason}"
        if turn.outcome == "answer":
            route.tools = None
        elif turn.outcome == "call" and turn.call is not None:
            route.calls = [turn.call]
        elif turn.pending is not None:
            turn.pending.ttl_s = self.router_spec.confirm_ttl_s
            route.phrase, route.pending, route.tools = turn.question, turn.pending, None

    def _answer_to_question(self, start: TurnStart, heard: Heard, messages: list[dict], settings: Settings,
                            revision: int, base: dict, events: TurnEvents) -> Route | None:
        """The turn after "Set the light to blue?": yes makes the call, a short no is acknowledged, anything
        else is a new request (None: decide it as usual)."""
        pending = start.pending
        assert pending is not None
        if pending.resolve(heard.text) and self.tools is not None:
            call = ToolCall(new_id(), llm_name(pending.tool), json.dumps(pending.arguments))
            route = Route("edge", f"confirmed: {pending.question}", Decision(False, "confirmed", "yes", revision),
                          settings, messages, self.tools.offered(start), calls=[call], language=base["language"])
        elif is_no(heard.text):
            route = Route("edge", f"declined: {pending.question}", Decision(False, "declined", "no", revision),
                          settings, messages, phrase=localized("declined", base["language"], self.declined),
                          language=base["language"])
        else:
            return None
        events.emit(Decided(source="edge", rule=route.decision.rule, reason=route.reason, revision=revision,
                            features=TurnFeatures.from_text(heard.text, **base), decision=route.decision,
                            tools=(pending.tool,) if route.calls else None))
        return route
