"""The embedding router inside the turn (issues 14 and 15), with the real MiniLM and the real bundled SmolLM2.

One embedding per turn decides whether a tool is wanted and the request's intent
class; the deciding stage acts on it: chat with tool words never calls, a clear
order calls, an unsure state change asks first and the call waits for the next
turn's yes; knowledge goes to a healthy cloud and gets an honest cached phrase
without one; a local answer in the wrong language is replaced; a Mandarin tool
request (the router is English) goes to the cloud's own tool calling over NATS.
"""

from __future__ import annotations

import pytest

from edge.cloud_link import CloudLink
from edge.escalation import CloudHealthMonitor, EscalationClient
from edge.phrases import UNAVAILABLE_EN
from edge.pipeline.observers import TurnEvents
from edge.pipeline.turn import Phrases, TurnStart, turn_messages
from edge.stages.answering import Answering
from edge.stages.deciding import Deciding, Route
from edge.stages.understanding import Heard
from edge.tools.site import SiteTools
from shared.chat import ChatClient
from shared.embeddings import shared_embedder
from shared.intent_router import IntentRouter
from shared.policy import DEFAULT_POLICY
from shared.small_talk import SmallTalkBook
from shared.topology import EscalationSpec, LlmSpec, ToolsSpec
from tests.test_answer_tools import PlainModel, board_session, cloud  # noqa: F401 - cloud is a fixture

KNOWLEDGE_OFFLINE = next(r.phrase for r in DEFAULT_POLICY.rules if r.name == "knowledge-offline")
UNSURE = "It's so dark in here"  # a clear match for the light, but the words never name it: asks first


@pytest.fixture(scope="module")
def router() -> IntentRouter:
    return IntentRouter(shared_embedder())


class Edge:
    """The deciding and answering stages as the engine wires them, the router in front."""

    def __init__(self, llm: ChatClient, spec: LlmSpec, router: IntentRouter, client: EscalationClient | None = None,
                 health: CloudHealthMonitor | None = None, tools: bool = True):
        link = CloudLink()
        if client is not None:
            link.attach(client, None, health)  # no watcher: the built-in default policy
        phrases = Phrases()
        site = SiteTools(ToolsSpec(), "local-site", llm, "llamacpp", spec.max_tokens, 0.0, router=router) \
            if tools else None
        self.answering = Answering(llm, spec, EscalationSpec(), link)
        self.deciding = Deciding(EscalationSpec(), link, self.answering.probe, site, router=router,
                                 declined=phrases.declined)

    async def turn(self, req: TurnStart, text: str, language: str = "en") -> tuple[Route, str, str]:
        messages = turn_messages("Answer in one short sentence.", req.history, text)
        route = await self.deciding.run(req, Heard(text, language), messages, TurnEvents(req.turn_id, []))
        source = self.answering.source(route, req)
        try:
            said = "".join([d async for d in source.stream()])
        finally:
            await source.aclose()
        return route, source.answered_by, said.strip()


@pytest.fixture
def local(llama_server):
    spec = LlmSpec(url=llama_server.base_url, model=llama_server.alias, max_tokens=40, temperature=0.0)
    return ChatClient(spec.url, spec.model), spec


def next_turn(req: TurnStart, route: Route) -> TurnStart:
    """The session's next turn: the question's pending call handed on once."""
    return TurnStart(TurnStart.new_id(), req.session_id, req.device_id, "text", mcp=req.mcp, pending=route.pending)


# ---------------------------------------------------------------- tool decisions
async def test_chat_with_tool_words_never_calls(router, local):
    board, req = await board_session()
    edge = Edge(*local, router)
    for text in ["I love the color blue", "Tell me about the volume of the Pacific Ocean"]:
        route, by, said = await edge.turn(req, text)
        assert route.tools is None and route.pending is None and by == "edge", (text, route.reason)
    assert board.calls == []


async def test_a_clear_order_calls_the_device_tool(router, local):
    board, req = await board_session()
    route, by, _ = await Edge(*local, router).turn(req, "Turn on the light")
    assert [c.name for c in board.calls] == ["self.light.turn_on"] and board.state.light_on
    assert by == "edge" and "tool call" in route.reason


async def test_an_unsure_state_change_asks_first_and_yes_makes_the_call(router, local):
    board, req = await board_session()
    edge = Edge(*local, router)
    route, by, said = await edge.turn(req, UNSURE)
    assert said == route.phrase and said.endswith("?") and route.pending is not None and by == "cache"
    assert board.calls == []  # nothing happens before the yes
    route2, by2, _ = await edge.turn(next_turn(req, route), "yes, go ahead")
    assert [c.name for c in board.calls] == [route.pending.tool] == ["self.light.turn_on"] and board.state.light_on
    assert route2.decision.rule == "confirmed"
    assert route2.pending is None


@pytest.mark.parametrize("reply", ["no thanks", "never mind"])
async def test_no_to_the_question_makes_no_call(router, local, reply):
    board, req = await board_session()
    edge = Edge(*local, router)
    route, _, _ = await edge.turn(req, UNSURE)
    _, by, said = await edge.turn(next_turn(req, route), reply)
    assert (by, said) == ("cache", Phrases().declined) and board.calls == []


async def test_a_late_yes_or_a_bare_yes_makes_no_call(router, local):
    board, req = await board_session()
    edge = Edge(*local, router)
    route, _, _ = await edge.turn(req, UNSURE)
    route.pending.asked_at -= route.pending.ttl_s + 1  # the user answered after the question had lapsed
    late, _, _ = await edge.turn(next_turn(req, route), "yes please")
    assert late.tools is None and late.pending is None and board.calls == []


# ---------------------------------------------------------------- answers by intent
async def test_knowledge_goes_to_a_healthy_cloud_and_small_talk_stays(router, local, nats_hub, nats_connect):
    _, req = await board_session()
    client = EscalationClient(await nats_connect(nats_hub.url), "edge-1", "local-site")
    edge = Edge(*local, router, client=client)
    messages = turn_messages("", [], "What is the capital of Japan?")
    route = await edge.deciding.run(req, Heard("What is the capital of Japan?", "en"), messages,
                                    TurnEvents(req.turn_id, []))
    assert (route.source, route.decision.rule) == ("cloud", "knowledge-to-cloud")
    fact = "How many minutes are in an hour?"  # the clock is shortlisted, but would never be called: a fact
    route = await edge.deciding.run(req, Heard(fact, "en"), turn_messages("", [], fact), TurnEvents(req.turn_id, []))
    assert (route.source, route.decision.rule, route.tools) == ("cloud", "knowledge-to-cloud", None)
    chat = await edge.deciding.run(req, Heard("How are you doing today?", "en"),
                                   turn_messages("", [], "How are you doing today?"), TurnEvents(req.turn_id, []))
    assert chat.source == "edge" and chat.decision.rule == "edge-intents"


async def test_knowledge_without_the_cloud_gets_the_honest_phrase(router, local, nats_hub, nats_connect):
    _, req = await board_session()
    nc = await nats_connect(nats_hub.url)
    health = CloudHealthMonitor(nc, "large")  # no worker heartbeat: the cloud is down
    await health.start()
    try:
        edge = Edge(*local, router, client=EscalationClient(nc, "edge-1", "local-site"), health=health)
        route, by, said = await edge.turn(req, "Which planet is closest to the sun?")
        assert (route.decision.rule, by, said) == ("knowledge-offline", "cache", KNOWLEDGE_OFFLINE)
    finally:
        await health.stop()


async def test_a_local_answer_in_another_language_is_replaced(router):
    _, req = await board_session()
    french = PlainModel("Bonjour, monsieur. Je vais très bien, merci.")
    edge = Edge(french, LlmSpec(url="http://127.0.0.1:9/v1", model="stand-in"), router, tools=False)
    route, by, said = await edge.turn(req, "How are you doing today?")
    assert route.source == "edge" and (by, said) == ("edge", UNAVAILABLE_EN)


async def test_a_local_answer_failing_the_check_goes_to_a_healthy_cloud(router, cloud):  # noqa: F811
    client, _ = await cloud(chat=PlainModel("I am fine, thank you."))
    _, req = await board_session()
    edge = Edge(PlainModel("Bonjour, monsieur."), LlmSpec(url="http://127.0.0.1:9/v1", model="stand-in"), router,
                client=client, tools=False)
    _, by, said = await edge.turn(req, "How are you doing today?")
    assert (by, said) == ("cloud", "I am fine, thank you.")


# ---------------------------------------------------------------- another language: the cloud's tool calling
async def test_a_mandarin_tool_request_is_executed_through_the_cloud(router, cloud):  # noqa: F811
    client, remote = await cloud([("self_light_turn_off", {})], "灯已经关了。")
    board, req = await board_session()
    board.state.light_on = True
    edge = Edge(PlainModel(), LlmSpec(url="http://127.0.0.1:9/v1", model="stand-in"), router, client=client)
    route, by, said = await edge.turn(req, "把灯关掉", language="zh")
    assert route.decision.rule == "other-language" and route.source == "cloud"
    assert "self_light_turn_off" in remote.offered[0]  # every tool of the session, the cloud's model chooses
    assert (by, said) == ("cloud", "灯已经关了。") and not board.state.light_on


# ---------------------------------------------------------------- small talk from the book
@pytest.fixture(scope="module")
def router_with_book() -> IntentRouter:
    embedder = shared_embedder()
    return IntentRouter(embedder, small_talk=SmallTalkBook(embedder))


@pytest.mark.parametrize("text, entry", [
    ("Hey, good morning to you!", "greeting"), ("Thanks so much, that was really helpful", "thanks"),
    ("Alright, I'm heading out, bye!", "farewell"), ("What do people call you?", "identity"),
])
async def test_small_talk_is_answered_from_the_book_without_the_model(router_with_book, text, entry):
    _, req = await board_session()
    french = PlainModel("Bonjour, monsieur.")  # what the model would say: never asked
    edge = Edge(french, LlmSpec(url="http://127.0.0.1:9/v1", model="stand-in"), router_with_book, tools=False)
    route, by, said = await edge.turn(req, text)
    assert (route.small_talk, by) == (entry, "edge"), route.reason
    assert said in edge.deciding.router.small_talk.all_replies("en")


@pytest.mark.parametrize("text", ["What is my name?", "Which planet is the biggest?", "Turn the light on"])
async def test_other_requests_are_not_small_talk(router_with_book, text):
    _, req = await board_session()
    edge = Edge(PlainModel("Something."), LlmSpec(url="http://127.0.0.1:9/v1", model="stand-in"), router_with_book,
                tools=False)
    route, _, _ = await edge.turn(req, text)
    assert route.small_talk is None, route.reason


@pytest.mark.parametrize("text, entry", [("I really appreciate it, thank you.", "thanks"),
                                         ("Okay, I have to go now. Bye!", "farewell"), ("Hi again!", "greeting")])
def test_the_router_and_the_book_agreeing_need_a_clear_lead_not_a_close_match(router_with_book, text, entry):
    book = router_with_book.small_talk
    assert book.match(shared_embedder().embed_one(text))[0] is None  # alone, the book is not sure enough
    assert router_with_book.route(text, None).small_talk == entry  # with the small_talk class, it answers


@pytest.mark.parametrize("text", ["How do you say goodbye in French?", "Plan a short morning routine for me.",
                                  "How many hours are in a day?"])
def test_a_question_classed_small_talk_but_not_led_by_one_entry_goes_to_the_model(router_with_book, text):
    assert router_with_book.route(text, None).small_talk is None
