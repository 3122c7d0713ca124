"""Spoken numbers and arithmetic (shared.spoken_math), the calculator's argument from the words, the router's
arithmetic decision, and the speech-act cues (shared.speech_act) that keep chat with tool words from acting.

None of these sentences is in a tool benchmark suite."""

from __future__ import annotations

import pytest

from edge.tools.calculator import calculate
from scripts.bench_tools import board_registry
from scripts.sim_board import SimBoard
from shared.argument_hints import argument_hints
from shared.speech_act import speech_act
from shared.spoken_math import spoken_expression, spoken_numbers, words_to_digits
from shared.tool_decision import decide_action


@pytest.mark.parametrize("text, digits", [
    ("one hundred and five, forty-two and 7", "105 , 42 and 7"),
    ("a hundred", "100"),
    ("three thousand two hundred and six", "3206"),
    ("two fifty-five", "255"),  # said short: two hundred fifty-five
    ("nine eleven", "911"),
    ("three point one four", "3.14"),
    ("twenty five sixty", "25 60"),
    ("five six", "5 6"),
    ("1,000 apples", "1000 apples"),
])
def test_words_to_digits(text, digits):
    assert words_to_digits(text) == digits


def test_spoken_numbers_keep_their_meaning():
    assert spoken_numbers("set it to thirty") == [30]
    assert spoken_numbers("seven times eight") == [7, 8]
    assert spoken_numbers("two point five") == [2.5]


@pytest.mark.parametrize("text, value", [
    ("What's nineteen times twenty-one?", 399),
    ("How much is four hundred and eighty divided by twelve?", 40),
    ("Take 18 away from 90", 72),
    ("subtract twelve from a hundred", 88),
    ("Could you add up 12, 30 and 8 for me", 50),
    ("add 7 to 35", 42),
    ("Multiply eleven by eleven please", 121),
    ("divide 3 into 27", 9),
    ("What is 30 percent of 70?", 21),
    ("eleven squared", 121),
    ("two cubed plus one", 9),
    ("the square root of 169", 13),
    ("2 to the power of 8", 256),
    ("half of 86", 43),
    ("what's 6 x 7", 42),
    ("the difference between 100 and 37", 63),
    ("one point five plus two point two five", 3.75),
    ("Um, quick one: sixty minus twenty-four, what is that?", 36),
    ("What is 10 percent of 300, so 0.1 times 300?", 30),
])
def test_spoken_arithmetic_evaluates_right(text, value):
    expression = spoken_expression(text)
    assert expression is not None, text
    assert calculate(expression) == pytest.approx(value)


@pytest.mark.parametrize("text", [
    "Add 2 cups of flour and 3 eggs", "I have 3 apples plus 2 pears", "It's minus 5 degrees outside",
    "Set the volume to 30", "What time is it?", "My grandma turned 90 times two hundred candles",
    "The game was 3 to 2", "Tell me about the year 1969", "",
])
def test_not_arithmetic(text):
    assert spoken_expression(text) is None


CALCULATOR = board_registry(SimBoard()).get("calculate")


def test_the_calculator_argument_comes_from_the_words():
    assert argument_hints(CALCULATOR, "What's nineteen times twenty-one?") == {"expression": "19 * 21"}
    assert argument_hints(CALCULATOR, "Tell me a joke") is None  # the model is asked


def test_plain_arithmetic_is_a_clear_calculation(router, tools):
    decision = router.route("How much is eighty-one divided by nine?", tools)
    assert (decision.tool, decision.clear, decision.intent) == ("calculate", True, "arithmetic")
    assert decide_action(decision, tools.get("calculate")).outcome == "call"


@pytest.mark.parametrize("text, field", [
    ("What is the volume of a cone?", "other_object"),
    ("Roughly what's the brightness of a full moon?", "other_object"),
    ("How do you change the battery in a smoke alarm?", "how_to"),
    ("How can I make my photos brighter?", "how_to"),
    ("I'm painting my bedroom blue", "statement"),
    ("My laptop screen is cracked", "statement"),
])
def test_speech_act_cues(text, field):
    act = speech_act(text)
    assert getattr(act, field), act


@pytest.mark.parametrize("text", [
    "I can barely see, please set the brightness to 80", "I'm off to bed, switch off the light",
    "I want the lamp green", "Can you turn the volume up?", "Battery level?",
])
def test_requests_are_not_statements(text):
    assert not speech_act(text).orders_nothing


@pytest.mark.parametrize("text", [
    "What is the volume of a cone?", "How do you change the battery in a smoke alarm?",
    "I'm painting my bedroom blue", "My laptop screen is cracked", "Tell me a tale about a golden fox",
])
def test_chat_forms_call_and_ask_nothing(router, tools, text):
    decision = router.route(text, tools)
    tool = tools.get(decision.tool) if decision.tool else None
    assert decide_action(decision, tool).outcome == "answer", decision


def test_explaining_is_asking(router, tools):
    assert speech_act("Could you explain what brightness means for a star?").how_to
    decision = router.route("Can you define what battery capacity means?", tools)
    tool = tools.get(decision.tool) if decision.tool else None
    assert decide_action(decision, tool).outcome == "answer", decision


@pytest.mark.parametrize("text, intent", [
    ("How many minutes are in an hour?", "knowledge"), ("How many sides does a square have?", "knowledge"),
    ("What is the boiling point of water?", "knowledge"), ("What's twelve times seven?", "arithmetic"),
    ("What time is it?", "lookup"),
])
def test_the_intent_is_checked_against_the_words(router, tools, text, intent):
    decision = router.route(text, tools)
    assert decision.intent == intent, decision
    assert (decision.tool == "calculate") == (intent == "arithmetic"), decision


@pytest.mark.parametrize("text, asks", [
    ("Time is a great healer, isn't it?", False), ("The clock in the hall is slow, you know?", False),
    ("What's the battery at?", True), ("Battery?", True), ("Tell me the time", True), ("Any idea of the time?", True),
])
def test_asking_at_all(text, asks):
    assert speech_act(text).asks is asks


def test_a_question_barely_like_small_talk_is_knowledge(router, tools):
    assert router.route("What do spiders eat?", tools).intent == "knowledge"
    assert router.route("How are you today?", tools).intent == "small_talk"
