"""Arguments read off the request's words: numbers, percentages, extremes, relative changes, options, clamping."""

from __future__ import annotations

import pytest

from shared.argument_hints import argument_hints, clamp_arguments, spoken_numbers
from shared.tool_calling import CatalogTool


def _tool(name: str, props: dict, description: str = "") -> CatalogTool:
    return CatalogTool(name, description, {"type": "object", "properties": props})


VOLUME = _tool("self.audio_speaker.set_volume", {"volume": {"type": "integer", "minimum": 0, "maximum": 100}})
LEVEL = _tool("self.led.set_level", {"level": {"type": "integer", "minimum": 0, "maximum": 255}})
THEME = _tool("self.screen.set_theme", {"theme": {"type": "string"}},
              "Set the theme of the screen. The theme can be `light` or `dark`.")
MODE = _tool("self.fan.set_mode", {"mode": {"type": "string", "enum": ["eco", "turbo"]}})
RGB = _tool("self.light.set_rgb", {c: {"type": "integer", "minimum": 0, "maximum": 255} for c in "rgb"})


@pytest.mark.parametrize("text, volume", [
    ("Volume twenty-five", 25), ("Crank the speaker up to eighty", 80), ("Lower the sound to 35 percent", 35),
    ("sixty percent please", 60), ("Could you turn the volume down to 20?", 20),  # a target wins over "down"
    ("set volume to 150", 100), ("volume at 0", 0),  # clamped to the schema range
    ("turn it all the way up", 100), ("max volume", 100), ("Please turn the volume all the way down", 0),
    ("mute it", 0), ("silence please", 0),
])
def test_numbers_percentages_and_extremes(text, volume):
    assert argument_hints(VOLUME, text) == {"volume": volume}


@pytest.mark.parametrize("text, state, volume", [
    ("a bit louder", {"volume": 70}, 80), ("turn it down", {"volume": 70}, 60), ("a lot quieter", {"volume": 70}, 45),
    ("louder by 20", {"volume": 30}, 50), ("turn it down by ten", {"volume": 30}, 20),
    ("a bit louder", {"volume": 95}, 100), ("quieter", {"volume": 5}, 0),  # clamped
    ("a bit louder", None, 60), ("quieter", {}, 40),  # no reported state: from the middle of the range
])
def test_relative_changes_from_the_reported_state(text, state, volume):
    assert argument_hints(VOLUME, text, state) == {"volume": volume}


def test_percentages_scale_to_a_wider_range_and_undecided_requests_stay_open():
    assert argument_hints(LEVEL, "half, 50 percent") == {"level": 128}
    assert argument_hints(LEVEL, "level 50") == {"level": 50}
    assert argument_hints(VOLUME, "volume from 20 to 30") is None  # two numbers: the model decides
    assert argument_hints(VOLUME, "change the volume") is None


def test_named_options_colours_and_clamping():
    assert argument_hints(THEME, "Dark mode on the screen please") == {"theme": "dark"}
    assert argument_hints(THEME, "Change the screen theme to light") == {"theme": "light"}
    assert argument_hints(THEME, "switch the theme") is None
    assert argument_hints(MODE, "fan to turbo") == {"mode": "turbo"}
    assert argument_hints(RGB, "Turn the lamp pink") == {"r": 255, "g": 105, "b": 180}
    assert argument_hints(RGB, "red 300 green 20 blue 0") == {"r": 255, "g": 20, "b": 0}
    assert clamp_arguments(VOLUME, {"volume": -4, "other": "x"}) == {"volume": 0, "other": "x"}
    assert spoken_numbers("seven times eight") == [7, 8]
