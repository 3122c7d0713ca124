"""Tool turns through the deciding and answering stages: the intent gate, the local tool loop, and the cloud round trip
over a real nats-server (the worker returns tool calls, the edge runs them on the device, the worker continues).

The models are deterministic stand-ins (tests/tool_helpers.py) so that the assertions are exact;
test_tool_loop_llm.py and test_e2e_cloud.py run the real bundled model.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from cloud.backends import BackendPool, Endpoint
from cloud.breaker import CircuitBreaker
from cloud.worker import Worker
from edge.cloud_link import CloudLink
from edge.escalation import CloudHealthMonitor, EscalationClient
from edge.pipeline.observers import TurnEvents
from edge.pipeline.turn import TurnStart
from edge.policy_watcher import PolicySnapshot
from edge.stages.answering import Answering
from edge.stages.deciding import Deciding
from edge.stages.understanding import Heard
from edge.tools.config import build_server_tools
from edge.tools.site import SiteTools
from scripts.sim_board import SimBoard
from shared.argument_hints import argument_hints, spoken_numbers
from shared.chat import ChatClient, ChatDelta, ChatError
from shared.grammar_tools import plain_messages, spoken_result
from shared.tool_intent import clear_winner, matched_words, needs_tools, shortlist
from shared.policy import DEFAULT_POLICY
from shared.topology import BackendSpec, EscalationSpec, LlmSpec, ToolsSpec
from tests.tool_helpers import ScriptedModel, connect

SUITE = yaml.safe_load((Path(__file__).parent / "data" / "tool_suite.yaml").read_text())["requests"]
LLM_SPEC = LlmSpec(url="http://127.0.0.1:9/v1", model="stand-in", max_tokens=40)


class PlainModel(ChatClient):
    """The edge's local model for turns without tools: one fixed answer, and it counts its calls."""

    def __init__(self, answer: str = "A plain answer."):
        super().__init__("http://127.0.0.1:9/v1", "stand-in")
        self.answer = answer
        self.calls = 0

    async def stream(self, messages, *, tools=None, max_tokens, temperature, logprobs=False):
        self.calls += 1
        yield ChatDelta(text=self.answer)
        yield ChatDelta(finish_reason="stop")


async def board_session(**board_kw) -> tuple[SimBoard, TurnStart]:
    board = SimBoard(**board_kw)
    mcp = connect(board, timeout=5.0)
    await mcp.initialize()
    return board, TurnStart(TurnStart.new_id(), "s1", "aa:bb:cc", "text", mcp=mcp)


def site_tools(local: ScriptedModel, **spec) -> SiteTools:
    tools = SiteTools(ToolsSpec(**spec), "local-site", PlainModel(), "llamacpp", max_tokens=40, temperature=0.0)
    tools.loop.caller = local  # the deterministic stand-in instead of grammar-forced SmolLM2
    return tools


class Planner:
    """The deciding and answering stages of a turn, as the engine wires them."""

    def __init__(self, plain: ChatClient, tools: SiteTools | None, client: EscalationClient | None = None,
                 watcher=None, health=None, spec: EscalationSpec = EscalationSpec(), local_busy=lambda: False):
        link = CloudLink()
        if client is not None:
            link.attach(client, watcher, health)
        self.answering = Answering(plain, LLM_SPEC, spec, link, local_busy=local_busy)
        self.deciding = Deciding(spec, link, self.answering.probe, tools)


async def answer(planner: Planner, req: TurnStart, text: str, deltas: list[str] | None = None):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
    route = await planner.deciding.run(req, Heard(text), messages, TurnEvents(req.turn_id, []))
    source = planner.answering.source(route, req)
    got = [d async for d in source.stream()]
    if deltas is not None:
        deltas += got
    return source.answered_by, "".join(got).strip()


# ---------------------------------------------------------------- the intent gate
async def test_intent_gate_on_the_request_suite():
    _, req = await board_session()
    registry = build_server_tools(ToolsSpec()).with_device(req.mcp)
    missed = [c["text"] for c in SUITE if c.get("tool") and not needs_tools(registry, c["text"])]
    false = {c["text"]: matched_words(registry, c["text"]) for c in SUITE
             if not c.get("tool") and needs_tools(registry, c["text"])}
    assert missed == [] and false == {}
    server_only = build_server_tools(ToolsSpec())
    assert needs_tools(server_only, "what time is it") and not needs_tools(server_only, "turn on the light")
    assert not needs_tools(None, "what time is it")
    assert not needs_tools(build_server_tools(ToolsSpec(enabled=[])), "what time is it")


async def test_clear_winners_skip_the_model_and_ambiguity_goes_to_it():
    _, req = await board_session()
    registry = build_server_tools(ToolsSpec()).with_device(req.mcp)
    winner = {text: getattr(clear_winner(registry, text), "name", None) for text in [
        "Turn on the light", "turn the light off", "Set the volume to 30", "What time is it",
        "How loud is the speaker?", "What is the speed of light?", "Lights out", "The lights please"]}
    assert winner == {"Turn on the light": "self.light.turn_on", "turn the light off": "self.light.turn_off",
                      "Set the volume to 30": "self.audio_speaker.set_volume", "What time is it": "get_time",
                      "How loud is the speaker?": None,  # a question never changes the device by word match
                      "What is the speed of light?": None, "Lights out": "self.light.turn_off",
                      "The lights please": None}
    assert {t.name for t in shortlist(registry, "The lights please")} >= {"self.light.turn_on", "self.light.turn_off"}
    assert shortlist(registry, "Tell me a story on cats") == []


def test_tool_results_read_as_facts_for_models_without_tool_roles():
    call = {"id": "c0", "type": "function",
            "function": {"name": "self_audio_speaker_set_volume", "arguments": '{"volume": 30}'}}
    msgs = plain_messages([{"role": "system", "content": "be brief"}, {"role": "user", "content": "volume 30"},
                           {"role": "assistant", "content": None, "tool_calls": [call]},
                           {"role": "tool", "tool_call_id": "c0", "content": "true"}])
    assert [m["role"] for m in msgs] == ["system", "user"] and msgs[1]["content"] == "volume 30"
    assert "You used audio speaker set volume (volume 30). Result: done" in msgs[0]["content"]


async def test_argument_hints_settle_colours_and_single_numbers():
    _, req = await board_session()
    rgb, volume = (build_server_tools(ToolsSpec()).with_device(req.mcp).get(n) for n in (
        "self.light.set_rgb", "self.audio_speaker.set_volume"))
    assert argument_hints(rgb, "Make the light red") == {"r": 255, "g": 0, "b": 0}
    assert argument_hints(rgb, "light to warm white please") == {"r": 255, "g": 180, "b": 100}
    assert argument_hints(rgb, "Set the light to red 100 green 50 blue 0") == {"r": 100, "g": 50, "b": 0}
    assert argument_hints(rgb, "red 100 and blue 20") is None  # half given: the model fills the rest
    assert argument_hints(volume, "Put the volume at fifty") == {"volume": 50}
    assert argument_hints(volume, "Set volume to 100") == {"volume": 100}
    assert argument_hints(volume, "volume from 20 to 30") is None and argument_hints(volume, "mute it") == {"volume": 0}
    assert spoken_numbers("one hundred and five, forty-two and 7") == [105, 42, 7]


def test_small_models_speak_tool_results_directly():
    def call(name: str) -> dict:
        return {"id": name, "type": "function", "function": {"name": name, "arguments": "{}"}}

    assert spoken_result([(call("self_light_turn_on"), "true"), (call("self_light_set_rgb"), "true")]) == "Okay, done."
    assert spoken_result([(call("self_screen_set_theme"), "false")]) == "Sorry, that didn't work."
    assert spoken_result([(call("self_battery_get_level"), '{"level": 87, "charging": false}')]) == \
        "Battery: level 87, charging no."
    assert spoken_result([(call("calculate"), "12 * 7 = 84")]) == "12 times 7 is 84."
    assert spoken_result([(call("get_time"), "It is 20:00 on Monday, 23 November 2026 (Asia/Shanghai, UTC+08:00).")]) \
        == "It is 20:00 on Monday, 23 November 2026."


# ---------------------------------------------------------------- local
async def test_local_tool_turn_runs_the_device_tool():
    board, req = await board_session()
    local = ScriptedModel([("self_light_turn_on", {})], "The light is on.")
    plain = PlainModel()
    planner = Planner(plain, site_tools(local))
    assert await answer(planner, req, "Turn on the light") == ("edge", "The light is on.")
    assert board.state.light_on is True and [c.name for c in board.calls] == ["self.light.turn_on"]
    assert "self_light_turn_on" in local.offered[0] and local.seen[1][-1]["content"] == "true"
    assert plain.calls == 0


async def test_chat_turn_pays_nothing_for_tools():
    _, req = await board_session()
    local = ScriptedModel()  # would fail if asked anything
    plain = PlainModel("Leonardo da Vinci.")
    planner = Planner(plain, site_tools(local))
    assert await answer(planner, req, "Who painted the Mona Lisa?") == ("edge", "Leonardo da Vinci.")
    assert plain.calls == 1 and local.seen == []


# ---------------------------------------------------------------- cloud over real NATS
@pytest.fixture
async def cloud(nats_hub, nats_connect):
    """A real worker on a real nats-server whose backend model is scripted per test; yields a factory."""
    started: list = []

    async def make(*rounds, chat: ChatClient | None = None) -> tuple[EscalationClient, ScriptedModel]:
        model = ScriptedModel(*rounds)
        spec = BackendSpec(name="scripted", url="http://127.0.0.1:9/v1", model="scripted")
        endpoint = Endpoint(spec, chat or ChatClient(spec.url, spec.model), CircuitBreaker("scripted", 3, 10.0))
        endpoint.tool_caller = model
        pool = BackendPool([endpoint])
        worker = Worker(await nats_connect(nats_hub.url), "w-tools", "large", pool)
        await worker.start()
        started.append((worker, pool))
        return EscalationClient(await nats_connect(nats_hub.url), "edge-1", "local-site"), model

    yield make
    for worker, pool in started:
        await worker.stop()
        await pool.stop()


class StaticPolicy:
    """The policy an operator would publish, here without the KV store: tool turns go to the cloud."""

    def current(self) -> PolicySnapshot:
        return PolicySnapshot(DEFAULT_POLICY.model_copy(update={"rules": tuple(
            r.model_copy(update={"action": "escalate"}) if r.name == "needs-tools" else r
            for r in DEFAULT_POLICY.rules)}), 7)


def cloud_planner(client: EscalationClient, local: ScriptedModel, **kw) -> Planner:
    return Planner(PlainModel(), site_tools(local, **kw), client, StaticPolicy())


async def test_cloud_tool_call_runs_on_the_edge_and_continues_the_generation(cloud):
    client, remote = await cloud([("self_light_set_rgb", {"r": 255, "g": 0, "b": 0})], "The light is red now.")
    board, req = await board_session()
    local = ScriptedModel()
    by, text = await answer(cloud_planner(client, local), req, "Make the light red")
    assert (by, text) == ("cloud", "The light is red now.")
    assert board.state.rgb == (255, 0, 0) and board.state.light_on
    assert "self_light_set_rgb" in remote.offered[0] and "get_time" in remote.offered[0]
    round2 = remote.seen[1]
    assert round2[-2]["tool_calls"][0]["function"]["name"] == "self_light_set_rgb"
    assert round2[-1]["role"] == "tool" and round2[-1]["content"] == "true"
    assert local.seen == []  # the edge model was not asked


async def test_last_cloud_round_offers_no_tools(cloud):
    client, remote = await cloud([("get_time", {})], "It is late.")
    _, req = await board_session()
    by, text = await answer(cloud_planner(client, ScriptedModel(), max_steps=2), req, "What time is it?")
    assert (by, text) == ("cloud", "It is late.")
    assert remote.offered[0] and remote.offered[1] is None  # the continuation must be answered in speech
    assert remote.seen[1][-1]["role"] == "tool" and "UTC" in remote.seen[1][-1]["content"]


async def test_cloud_tool_call_to_a_silent_device_is_an_apology(cloud):
    client, remote = await cloud([("self_light_turn_off", {})], "unused")
    board, req = await board_session(silent={"self.light.turn_off"})
    by, text = await answer(cloud_planner(client, ScriptedModel(), device_timeout_s=0.5), req, "Turn off the light")
    assert (by, text) == ("cloud", "Sorry, the device didn't answer.")
    assert len(remote.seen) == 1  # no continuation after a failed tool


async def test_cloud_failing_after_the_tool_ran_is_finished_locally(cloud):
    client, remote = await cloud([("self_audio_speaker_set_volume", {"volume": 20})],
                                 ChatError("backend exploded", retryable=False))
    board, req = await board_session()
    local = ScriptedModel("Volume is now 20.")
    by, text = await answer(cloud_planner(client, local), req, "Set the volume to 20")
    assert (by, text) == ("cloud", "Volume is now 20.")
    assert board.state.volume == 20
    assert local.offered == [None] and local.seen[0][-1] == {"role": "tool", "tool_call_id": "c0", "content": "true"}


async def test_default_policy_keeps_tool_turns_on_the_edge(cloud):
    client, remote = await cloud()  # would fail if asked anything
    board, req = await board_session()
    local = ScriptedModel([("self_light_turn_on", {})], "Done.")
    planner = Planner(PlainModel(), site_tools(local), client)  # no watcher: the built-in default policy
    assert await answer(planner, req, "Turn on the light") == ("edge", "Done.")
    assert board.state.light_on and remote.seen == []


async def test_unreachable_cloud_falls_back_to_the_local_tool_loop(cloud, nats_hub, nats_connect):
    client = EscalationClient(await nats_connect(nats_hub.url), "edge-1", "local-site")  # no worker at all
    board, req = await board_session()
    local = ScriptedModel([("self_light_turn_on", {})], "Done, the light is on.")
    by, text = await answer(cloud_planner(client, local), req, "Switch the light on please")
    assert by == "edge" and text.endswith("Done, the light is on.") and board.state.light_on


# ---------------------------------------------------------------- escalated chat: never a long silence
class SlowModel(PlainModel):
    """A cloud model that needs ``delay`` seconds before its first token."""

    def __init__(self, answer: str, delay: float):
        super().__init__(answer)
        self.delay = delay

    async def stream(self, messages, *, tools=None, max_tokens, temperature, logprobs=False):
        self.calls += 1
        await asyncio.sleep(self.delay)
        yield ChatDelta(text=self.answer)
        yield ChatDelta(finish_reason="stop")


class EscalateAll:
    def current(self) -> PolicySnapshot:
        return PolicySnapshot(DEFAULT_POLICY.model_copy(update={
            "rules": (), "default_action": "escalate",
            "budget": DEFAULT_POLICY.budget.model_copy(update={"max_share": 1.0})}), 3)


async def test_slow_cloud_gets_the_let_me_think_lead_in_then_its_answer(cloud):
    slow = SlowModel("Paris is the capital.", delay=0.8)  # longer than lead_in_ms, shorter than the timeout
    client, _ = await cloud(chat=slow)
    _, req = await board_session()
    deltas: list[str] = []
    local = PlainModel("local answer")
    by, text = await answer(Planner(local, None, client, EscalateAll(), spec=EscalationSpec(lead_in_ms=300)), req,
                            "What is the capital of France?", deltas)
    assert by == "cloud" and deltas[0].strip() == DEFAULT_POLICY.settings.let_me_think_phrase
    assert text.endswith("Paris is the capital.") and slow.calls == 1 and local.calls == 0


async def test_no_lead_in_when_the_cloud_answers_within_it(cloud):
    client, _ = await cloud(chat=PlainModel("Quick cloud answer."))
    _, req = await board_session()
    by, text = await answer(Planner(PlainModel(), None, client, EscalateAll(), spec=EscalationSpec(lead_in_ms=60000)),
                            req, "What is the capital of France?")
    assert (by, text) == ("cloud", "Quick cloud answer.")


async def test_on_a_loaded_edge_the_lead_in_comes_sooner(cloud):
    """Every local slot taken: a cloud answer's first sentence would synthesize slowly on the busy CPU, so the
    lead-in does not wait the whole lead_in_ms for the cloud's text (a quiet edge does, and says no phrase)."""
    from edge.stages.answering import LOADED_LEAD_IN_S

    client, _ = await cloud(chat=SlowModel("Paris is the capital.", delay=0.25))
    _, req = await board_session()
    spec = EscalationSpec(lead_in_ms=600)  # well above the cloud's 0.25 s (and the NATS hop) on a busy test box
    by, text = await answer(Planner(PlainModel(), None, client, EscalateAll(), spec=spec), req,
                            "What is the capital of France?")
    assert (by, text) == ("cloud", "Paris is the capital.")  # quiet: the answer within the window, no phrase
    deltas: list[str] = []
    loaded = Planner(PlainModel(), None, client, EscalateAll(), spec=spec, local_busy=lambda: True)
    by, text = await answer(loaded, req, "What is the capital of France?", deltas)
    assert by == "cloud" and deltas[0].strip() == DEFAULT_POLICY.settings.let_me_think_phrase, deltas
    assert text.endswith("Paris is the capital.") and LOADED_LEAD_IN_S < 0.25


async def test_cloud_known_down_is_answered_locally_at_once(nats_hub, nats_connect):
    nc = await nats_connect(nats_hub.url)
    client = EscalationClient(nc, "edge-1", "local-site")
    health = CloudHealthMonitor(nc, "large")  # listening, but no worker heartbeat: the cloud is down
    await health.start()
    _, req = await board_session()
    deltas: list[str] = []
    local = PlainModel("Local answer.")
    def fallbacks() -> float:
        return sum(s.value for m in REGISTRY.collect() for s in m.samples if s.name == "xz_edge_cloud_fallbacks_total")

    tried = fallbacks()
    by, text = await answer(Planner(local, None, client, EscalateAll(), health), req, "Explain relativity", deltas)
    assert (by, text) == ("edge", "Local answer.") and deltas == ["Local answer."]  # no "let me think" either
    assert fallbacks() == tried  # the cloud was not even tried
    await health.stop()
