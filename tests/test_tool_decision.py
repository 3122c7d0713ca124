"""The decision rule (call / confirm / answer), which tools read, confirmation questions, the yes/no answer."""

from __future__ import annotations

import pytest

from scripts.sim_board import SimBoard
from shared.intent_router import RouteDecision
from shared.tool_calling import CatalogTool
from shared.tool_decision import (PendingCall, confirmation_question, decide_action, is_bare_reply, is_no, is_yes,
                                  tool_effect)

BOARD = {t.name: CatalogTool(t.name, t.description, t.to_json()["inputSchema"]) for t in SimBoard().tools}
TIME = CatalogTool("get_time", "Get the current local time.", {})
CALC = CatalogTool("calculate", "Calculate an arithmetic expression.", {})


def _route(tool: str | None, clear: bool, named: bool = True, question: bool = False) -> RouteDecision:
    return RouteDecision(tool, 0.6, 0.4, 0.2 if clear else 0.05, clear, (tool,) if tool else (), "command", 0.5, 3.0,
                         (tool,) if tool and named else (), question)


@pytest.mark.parametrize("name, effect", [
    ("get_time", "reads"), ("calculate", "reads"), ("self.battery.get_level", "reads"),
    ("self.get_device_status", "reads"), ("self.get_system_info", "reads"),
    ("self.audio_speaker.set_volume", "changes"), ("self.light.set_rgb", "changes"), ("self.light.turn_on", "changes"),
    ("self.screen.set_theme", "changes"), ("self.reboot", "changes"), ("self.upgrade_firmware", "changes"),
])
def test_reading_and_state_changing_tools_by_name(name, effect):
    tool = BOARD.get(name) or {"get_time": TIME, "calculate": CALC}.get(name) or CatalogTool(name, "", {})
    assert tool_effect(tool) == effect


def test_mcp_read_only_hint_wins_over_the_name():
    class Annotated(CatalogTool):
        annotations = {"readOnlyHint": True}

    assert tool_effect(Annotated("self.lamp.set_scene", "", {})) == "reads"
    Annotated.annotations = {"readOnlyHint": False}
    assert tool_effect(Annotated("self.get_and_reset_counter", "", {})) == "changes"


def test_decision_rule():
    volume, battery = BOARD["self.audio_speaker.set_volume"], BOARD["self.battery.get_level"]
    assert decide_action(_route(volume.name, clear=True), volume).outcome == "call"
    assert decide_action(_route(volume.name, clear=False), volume).outcome == "confirm"
    assert decide_action(_route(volume.name, clear=True, named=False), volume).outcome == "confirm"  # words disagree
    assert decide_action(_route(volume.name, clear=True, question=True), volume).outcome == "confirm"  # asks about
    assert decide_action(_route(battery.name, clear=False), battery).outcome == "call"  # reading: weaker margin
    assert decide_action(_route(battery.name, clear=True, named=False), battery).outcome == "call"
    assert decide_action(_route(battery.name, clear=False, named=False), battery).outcome == "answer"
    assert decide_action(_route(None, clear=False), volume).outcome == "answer"  # chat never changes state
    assert decide_action(_route(None, clear=False), battery).outcome == "answer"
    assert decide_action(_route(volume.name, clear=True), None).outcome == "answer"


def test_confirmation_questions_say_what_would_happen():
    assert confirmation_question(BOARD["self.light.set_rgb"], {"r": 0, "g": 0, "b": 255}) == "Set the light to blue?"
    assert confirmation_question(BOARD["self.light.set_rgb"], {"r": 1, "g": 2, "b": 3}) == \
        "Set the light to red 1, green 2, blue 3?"
    assert confirmation_question(BOARD["self.light.turn_off"], {}) == "Turn the light off?"
    assert confirmation_question(BOARD["self.audio_speaker.set_volume"], {"volume": 0}) == \
        "Set the audio speaker volume to 0?"
    assert confirmation_question(BOARD["self.screen.set_theme"], {"theme": "dark"}) == "Set the screen theme to dark?"
    assert confirmation_question(BOARD["self.reboot"], {}) == "Reboot?"


@pytest.mark.parametrize("answer", ["yes", "Yes please", "sure, go ahead", "yeah do it", "okay", "of course",
                                    "please", "Yep!", "that's right"])
def test_yes(answer):
    assert is_yes(answer)


@pytest.mark.parametrize("answer", ["no", "No thanks", "never mind", "nope", "don't", "wait", "yes... no, cancel",
                                    "not now", "what's the weather", "", "hmm", "maybe later"])
def test_anything_else_is_no(answer):
    assert not is_yes(answer)


def test_pending_call_acts_only_on_a_timely_yes():
    pending = PendingCall("self.light.set_rgb", {"r": 0, "g": 0, "b": 255}, "Set the light to blue?", asked_at=100.0)
    assert pending.resolve("sure, go ahead", now=105.0)
    assert not pending.resolve("no", now=105.0)
    assert not pending.resolve(None, now=105.0) and not pending.resolve("  ", now=105.0)  # silence
    assert not pending.resolve("yes", now=200.0)  # too late: a new request


def test_bare_replies_and_refusals():
    assert all(is_bare_reply(t) for t in ["yes please", "no thanks", "sure, go ahead", "never mind", "ok"])
    assert not any(is_bare_reply(t) for t in ["Turn on the light please", "light on please", "yes, what time is it"])
    assert is_no("no thanks") and is_no("never mind") and not is_no("no, what time is it in Tokyo?")


def test_server_tools_read_whatever_their_name():
    from edge.tools.config import build_server_tools
    from shared.topology import HttpToolSpec, ToolsSpec

    spec = ToolsSpec(http=[HttpToolSpec(name="weather", description="The weather at a place.",
                                        url="https://example.org/w?q={city}",
                                        parameters={"type": "object", "properties": {"city": {"type": "string"}}})],
                     enabled=["get_time", "calculate", "weather"])
    registry = build_server_tools(spec)
    assert {t.name: tool_effect(t) for t in registry} == {"get_time": "reads", "calculate": "reads",
                                                           "weather": "reads"}
