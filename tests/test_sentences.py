"""edge.sentences: sentences cut from streamed LLM text, as early as is safe."""

from __future__ import annotations

from dataclasses import fields

import pytest

from edge.phrases import LOCALIZED
from edge.pipeline.turn import Phrases
from edge.sentences import SentenceSplitter, SplitterConfig


def stream(text: str, step: int = 1, config: SplitterConfig | None = None) -> tuple[list[str], list[str]]:
    """Feed ``text`` ``step`` characters at a time; (sentences from feed, sentences from flush)."""
    s = SentenceSplitter(config)
    fed: list[str] = []
    for i in range(0, len(text), step):
        fed += s.feed(text[i:i + step])
    return fed, s.flush()


def pieces(text: str, step: int = 1, config: SplitterConfig | None = None) -> list[str]:
    fed, rest = stream(text, step, config)
    return fed + rest


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_plain_sentences_any_token_size(step):
    text = "The sky is blue today. Do you like it? I really do! Let me know…  Bye for now."
    assert pieces(text, step) == ["The sky is blue today.", "Do you like it?", "I really do!", "Let me know…",
                                  "Bye for now."]


def test_sentences_come_out_while_streaming():
    fed, rest = stream("Paris is the capital of France. It is lovely in spring. And in autumn")
    assert fed == ["Paris is the capital of France.", "It is lovely in spring."]
    assert rest == ["And in autumn"]


def test_sentence_end_waits_for_the_next_token():
    s = SentenceSplitter()
    assert s.feed("The value is 3.") == []  # might still become 3.5
    assert s.feed("5 metres. ") == ["The value is 3.5 metres."]


@pytest.mark.parametrize("text", [
    "Pi is roughly 3.14159 and e is 2.718 in value.",
    "Talk to Mr. Smith and Dr. Jones about it today.",
    "Bring fruit, e.g. apples, or i.e. anything sweet really.",
    "She moved to the U.S. last year with her family.",
    "Visit www.example.com/a.b.html or docs.python.org for details.",
    "The book is by J. R. R. Tolkien and it is great.",
    "It costs $1,299.99 at most stores nowadays.",
])
def test_no_cut_inside_numbers_abbreviations_urls(text):
    assert pieces(text, config=SplitterConfig(first_clause_chars=0, first_max_chars=0)) == [text]


def test_cjk_punctuation_needs_no_space():
    assert pieces("你好！今天天气很好。我们去公园吧；你觉得呢？好的") == [
        "你好！今天天气很好。", "我们去公园吧；你觉得呢？", "好的"]  # ； only cuts a long clause


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_ascii_punctuation_after_cjk_ends_a_sentence(step):
    # Whisper and models write half-width marks in Chinese too, with no space after them
    assert pieces("今天天气很好.我们去公园吧!你觉得呢?好的", step) == [
        "今天天气很好.", "我们去公园吧!", "你觉得呢?", "好的"]
    assert pieces("它有3.5米高。", step) == ["它有3.5米高。"]  # a decimal point is not after a CJK character


def test_long_chinese_clauses_are_cut_at_clause_marks():
    first = "长城是中国古代的军事防御工程，"
    clauses = ["它东起山海关西到嘉峪关全长两万多公里，", "修建的历史可以追溯到两千多年前的春秋战国时期、",
               "后来秦始皇把各国的长城连在一起；", "明朝又进行了大规模的修建。"]
    got = pieces(first + "".join(clauses))
    # the first piece at the first-clause length, then a cut after every clause mark past clause_chars
    assert got == [first, clauses[0] + clauses[1], clauses[2] + clauses[3]]
    assert pieces("北京很大，人很多，东西好吃，我很喜欢。") == ["北京很大，人很多，东西好吃，", "我很喜欢。"]


@pytest.mark.parametrize("phrase", [p for lang in LOCALIZED.values() for p in lang.values()]
                         + [getattr(Phrases(), f.name) for f in fields(Phrases)])
def test_every_edge_phrase_is_a_sentence_of_its_own(phrase):
    # the lead-in ("请稍等。") must play while the cloud still thinks, not wait to merge with its answer
    fed, _ = stream(phrase + " 北京是中国的首都。")
    assert fed[0] == phrase


def test_max_length_is_a_weight_for_cjk_text():
    text = "啊" * 150
    got = pieces(text, step=7, config=SplitterConfig(max_chars=100, first_max_chars=0))
    assert "".join(got) == text and [len(p) for p in got] == [50, 50, 50]  # a CJK character weighs two
    marked = "我们今天去公园散步然后回家吃饭" * 3 + "，" + "晚上看电视" * 4
    got = pieces(marked, step=3, config=SplitterConfig(max_chars=100, first_max_chars=0))
    assert got[0].endswith("，") and "".join(got) == marked  # cut at the clause mark within the limit


def test_newlines_end_sentences():
    assert pieces("First line without a stop\nSecond line here\n\nThird one") == [
        "First line without a stop", "Second line here", "Third one"]


def test_short_fragments_merge_into_the_next_sentence():
    assert pieces("Hi! Ok. The weather is nice today.") == ["Hi! Ok. The weather is nice today."]
    assert pieces("Sure. I can help.") == ["Sure. I can help."]


def test_first_chunk_may_end_at_a_comma_once_long_enough():
    text = "Well, the capital of France is Paris, which is a lovely city, and it has the Eiffel Tower."
    got = pieces(text)
    # "Well," is too short to cut; the first cut is at the comma after 24+ characters; later commas never cut
    assert got == ["Well, the capital of France is Paris,",
                   "which is a lovely city, and it has the Eiffel Tower."]


def test_first_clause_cut_is_configurable_and_cjk_aware():
    text = "Well, the capital of France is Paris, which is a lovely city."
    assert pieces(text, config=SplitterConfig(first_clause_chars=0, first_max_chars=0)) == [text]
    # CJK characters count twice: the first "，" (9 characters) is too early, the second is not
    assert pieces("北京是中国的首都，也是一座历史悠久的城市，有很多名胜古迹。") == [
        "北京是中国的首都，也是一座历史悠久的城市，", "有很多名胜古迹。"]


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_a_long_opening_sentence_is_cut_at_a_space_sooner_than_the_rest(step):
    """Only the first piece (all the device waits for) is cut early; later sentences stay whole up to max_chars."""
    text = ("The speed of light is approximately two hundred and ninety nine thousand kilometres per second. "
            "That is fast enough to circle the whole Earth seven and a half times in a single second.")
    got = pieces(text, step)
    assert got[0] == "The speed of light is approximately two hundred"  # the last space within 48 characters
    assert got[1:] == ["and ninety nine thousand kilometres per second.",
                       "That is fast enough to circle the whole Earth seven and a half times in a single second."]
    assert pieces(text, step, SplitterConfig(first_max_chars=0))[0] == text.split(". ")[0] + "."


def test_thousands_separator_is_not_a_clause_end():
    assert pieces("The population was 1,000,000 people, roughly, in that year.")[0] == \
        "The population was 1,000,000 people,"


def test_max_length_forces_a_cut_at_a_space():
    text = " ".join(f"word{i}" for i in range(80))
    got = pieces(text, step=5, config=SplitterConfig(max_chars=100))
    assert " ".join(got) == text
    assert all(len(p) <= 100 for p in got) and len(got) >= 4
    assert all(p.split(" ")[-1].startswith("word") and p.split(" ")[-1][4:].isdigit() for p in got)  # whole words


def test_flush_returns_rest_and_resets():
    s = SentenceSplitter()
    assert s.feed("No ending punctuation here") == []
    assert s.flush() == ["No ending punctuation here"]
    assert s.flush() == []
    assert s.feed("   \n ") == []
    assert s.flush() == []


def test_closing_quotes_stay_with_their_sentence():
    assert pieces('He said "stop right there." Then he left the room.') == [
        'He said "stop right there."', "Then he left the room."]
