"""edge.emotion: the face for the firmware's ``llm`` message, and emoji removal before TTS."""

from __future__ import annotations

import pytest

from edge.emotion import DEFAULT, EMOTIONS, pick_emotion, strip_emoji

FIRMWARE_EMOTIONS = {"neutral", "happy", "laughing", "funny", "sad", "angry", "crying", "loving", "embarrassed",
                     "surprised", "shocked", "thinking", "winking", "cool", "relaxed", "delicious", "kissy",
                     "confident", "sleepy", "silly", "confused"}


def test_only_emotions_the_firmware_knows():
    assert set(EMOTIONS) == FIRMWARE_EMOTIONS


@pytest.mark.parametrize("text,emotion", [
    ("😂 That is a good one!", "funny"),
    ("  😭 I am so sorry.", "crying"),
    ("😍 I love that song.", "loving"),
    ("🤔 Let me see.", "thinking"),
    ("😎 Easy.", "cool"),
    ("❤️ Thank you.", "loving"),  # with a variation selector
    ("👍🏽 Done.", "happy"),  # with a skin-tone modifier
])
def test_leading_emoji_wins(text, emotion):
    assert pick_emotion(text) == (emotion, EMOTIONS[emotion])


def test_leading_emoji_beats_keywords():
    assert pick_emotion("😎 Sorry, no.")[0] == "cool"


@pytest.mark.parametrize("text,emotion", [
    ("I'm sorry to hear that.", "sad"),
    ("Haha, that's a fun one.", "laughing"),
    ("Wow, that is amazing!", "surprised"),
    ("That sounds delicious.", "delicious"),
    ("Good night, sleep well.", "sleepy"),
    ("Great, glad I could help!", "happy"),
    ("对不起，我很抱歉。", "sad"),
])
def test_keywords(text, emotion):
    assert pick_emotion(text)[0] == emotion


@pytest.mark.parametrize("text", ["The capital of France is Paris.", "", "This is history.", "🦆 Quack."])
def test_default_is_neutral(text):
    # no keyword as a whole word ("hi" in "This", "history"), and an emoji the map does not know
    assert pick_emotion(text) == DEFAULT == ("neutral", "🙂")


def test_strip_emoji():
    assert strip_emoji("😀 Hello  👋🏽 world! 🇫🇷 ❤️") == "Hello world!"
    assert strip_emoji("👨‍👩‍👧 Family") == "Family"
    assert strip_emoji("Call 911 # now, 3 * 4 = 12") == "Call 911 # now, 3 * 4 = 12"
    assert strip_emoji("你好😊。") == "你好。"
