"""The output check: answers in another language or with nothing useful in them are caught; right ones pass."""

from __future__ import annotations

import pytest

from shared.answer_check import check_answer, expected_language
from shared.text_language import guess_language, sentence_languages


@pytest.mark.parametrize("text, lang", [
    ("The capital of Japan is Tokyo.", "en"), ("Yes.", "en"), ("Bonjour, monsieur.", "fr"),
    ("Il neige, monsieur.", "fr"), ("Hola, ¿cómo estás?", "es"), ("Guten Tag, wie geht es?", "de"),
    ("北京是中国的首都。", "zh"), ("東京は日本の首都です。", "ja"), ("Tokyo.", "und"), ("42", "und"),
])
def test_language_of_short_answers(text, lang):
    assert guess_language(text) == lang


def test_a_french_opening_to_an_english_question_is_caught():
    v = check_answer("What is the capital of Japan?", "Bonjour, monsieur. The capital of Japan is Tokyo.")
    assert (v.ok, v.problem, v.language) == (False, "foreign_language", "en")
    assert v.kept == "The capital of Japan is Tokyo."  # what is left to speak, if the caller wants it
    v = check_answer("Is it snowing outside?", "Il neige, monsieur.")
    assert v.problem == "foreign_language" and v.kept == ""
    assert sentence_languages("Bonjour, monsieur. The capital of Japan is Tokyo.") == ["fr", "en"]


@pytest.mark.parametrize("question, answer", [
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is 15 plus 27?", "42."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
    ("Hello!", "Hello! How can I help you?"),
    ("How are you?", "I'm doing well, thank you!"),
    ("现在几点了？", "现在是下午三点。"),
    ("Hello there.", "Hello there!"),  # a greeting greeted back is no echo
])
def test_right_answers_pass(question, answer):
    assert check_answer(question, answer).ok


@pytest.mark.parametrize("question, answer, problem", [
    ("Which planet is closest to the sun?", "", "empty"),
    ("Which planet is closest to the sun?", " ... ", "empty"),
    ("Which planet is closest to the sun?", "Hello! How can I help you today?", "greeting_only"),
    ("Tell me a joke.", "Sure!", "greeting_only"),
    ("What is frozen water called?", "What is frozen water called?", "echo"),
    ("现在几点了？", "It is three o'clock.", "foreign_language"),
])
def test_useless_answers_are_caught(question, answer, problem):
    assert check_answer(question, answer).problem == problem


def test_the_users_language_comes_from_the_asr_when_known():
    assert expected_language("Paris?", "fr-FR") == "fr"
    assert expected_language("Tokyo?") == "en"  # nothing decides: English, the bundled tier's language
    assert expected_language("中国的首都是哪里？") == "zh"
    assert check_answer("Paris?", "Oui, c'est la capitale de la France.", language="fr").ok
