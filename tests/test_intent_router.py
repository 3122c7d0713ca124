"""The embedding router with the real MiniLM: chat with tool words stays chat, paraphrases reach their tool.

None of these sentences is a routing example (shared/data/tool_routes.yaml) or in a benchmark suite.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scripts.bench_tools import board_registry
from scripts.sim_board import SimBoard
from shared.intent_router import IntentRouter, LabelSetError, load_intent_examples
from shared.tool_decision import decide_action

STATE_CHANGING = {"self.audio_speaker.set_volume", "self.screen.set_brightness", "self.screen.set_theme",
                  "self.light.set_rgb", "self.light.turn_on", "self.light.turn_off"}


@pytest.mark.parametrize("text", [
    "Blue is such a calming colour", "The ocean has an enormous volume of water", "My car battery is dead again",
    "I had the time of my life", "What colour are flamingos?", "Do you know how light bulbs work?",
    "The theme of the book is friendship", "My brother plays his music way too loud",
    "What's the brightest star in the sky?", "How are you this evening?",
])
def test_chat_with_tool_words_stays_chat(router, tools, text):
    decision = router.route(text, tools)
    assert decision.tool not in STATE_CHANGING, decision
    assert decide_action(decision, tools.get(decision.tool) if decision.tool else None).outcome != "call" \
        or decision.tool not in STATE_CHANGING


@pytest.mark.parametrize("text, tool", [
    ("Pump up the volume to sixty", "self.audio_speaker.set_volume"),
    ("Could you speak a bit more quietly", "self.audio_speaker.set_volume"),
    ("Paint the lamp in violet", "self.light.set_rgb"),
    ("Kill the lights", "self.light.turn_off"),
    ("Put the screen into night mode", "self.screen.set_theme"),
    ("How much juice is left in your battery?", "self.battery.get_level"),
    ("What's the hour?", "get_time"),
    ("What is forty two divided by six?", "calculate"),
])
def test_paraphrases_route_to_their_tool(router, tools, text, tool):
    decision = router.route(text, tools)
    assert decision.tool is not None and tool in decision.candidates, decision


@pytest.mark.parametrize("text, intent", [
    ("Hey, nice to meet you!", "small_talk"), ("Turn the lamp green", "command"),
    ("What is 6 times 7?", "arithmetic"), ("Who discovered penicillin?", "knowledge"),
    ("Why do cats purr when they are happy?", "reasoning"), ("Is my battery charging?", "lookup"),
])
def test_intent_class_from_the_label_sets(router, tools, text, intent):
    assert router.route(text, tools).intent == intent


def test_decision_fields_and_no_tools(router, tools):
    decision = router.route("Set the volume to 30", tools)
    assert decision.clear and decision.tool == "self.audio_speaker.set_volume" and decision.candidates[0] == decision.tool
    assert decision.margin == pytest.approx(decision.score - decision.chat_score) and decision.ms > 0
    no_tools = router.route("Set the volume to 30", None)
    assert no_tools.is_chat and no_tools.intent == "command"
    assert router.route("   ", tools).is_chat


def test_tool_vocabularies_are_cached_per_tool(router, tools):
    router.warm(tools)
    cached = len(router._tool_vectors)
    router.route("What time is it?", tools)
    router.route("What time is it?", board_registry(SimBoard()))  # another session, same tools
    assert len(router._tool_vectors) == cached


def test_label_sets_load_from_yaml_and_bad_files_are_clear_errors(tmp_path: Path, minilm):
    extra = tmp_path / "more.yaml"
    extra.write_text("classes:\n  knowledge: ['what is the boiling point of water']\n")
    merged = load_intent_examples([Path("shared/data/intent_examples.yaml"), extra])
    assert "what is the boiling point of water" in merged["knowledge"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: [a, b]\n")
    with pytest.raises(LabelSetError, match="classes"):
        load_intent_examples([bad])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("classes:\n  gossip: ['did you hear']\n")
    with pytest.raises(LabelSetError, match="gossip"):
        IntentRouter(minilm, intent_files=[unknown])


async def test_routed_caller_with_the_bundled_model(router, tools, llama_server):
    """The router in front of the real grammar caller: chat answers, a clear order calls, an unclear one asks."""
    from shared.chat import ChatClient
    from shared.grammar_tools import GrammarToolCaller
    from shared.routed_tools import RoutedToolCaller

    llm = ChatClient(llama_server.base_url, llama_server.alias, timeout=120)
    routed = RoutedToolCaller(router, GrammarToolCaller(llm))

    async def turn(text: str, **kw):
        return await routed.decide([{"role": "user", "content": text}], tools, **kw)

    try:
        assert (await turn("I love the color blue")).outcome == "answer"
        volume = await turn("Set the volume to 30")
        assert volume.outcome == "call" and volume.call.name == "self_audio_speaker_set_volume"
        assert json.loads(volume.call.arguments) == {"volume": 30}
        louder = await turn("Turn the volume up a bit", state={"volume": 70})
        assert louder.call is not None and json.loads(louder.call.arguments) == {"volume": 80}
        asked = await turn("How do I mute the speaker?")  # a question about muting: never muted without asking
        assert asked.outcome in ("confirm", "answer")
        if asked.outcome == "confirm":
            assert asked.question.endswith("?") and asked.pending is not None
            assert not asked.pending.resolve("no") and asked.pending.resolve("yes, go ahead")
    finally:
        await llm.aclose()
