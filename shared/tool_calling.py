"""How a model is asked to call tools, shared by the edge's tool loop and the cloud worker.

Two strategies behind one :class:`ToolCaller` interface (one LLM round that
streams text and/or ends with ``tool_calls``):

- :class:`NativeToolCaller`: the server parses tool calls itself (vLLM, Ollama,
  OpenAI, llama.cpp with a tool-aware chat template);
- :class:`shared.grammar_tools.GrammarToolCaller`: a grammar-forced JSON decision
  for small models whose chat template has no tool format (SmolLM2 on llama.cpp).

Both work on a :class:`ToolSet`: the edge's ``ToolRegistry`` (tools it can run)
or, on a worker, a :class:`ToolCatalog` built from the request's OpenAI tool
definitions (tools the worker only describes; the edge runs them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, Literal, Protocol, Sequence

from shared.chat import ChatClient, ChatDelta

ToolCallMode = Literal["auto", "native", "grammar"]
Example = tuple[str, dict[str, Any]]  # (a request, the arguments it should produce)

_LLM_NAME_BAD = re.compile(r"[^a-zA-Z0-9_-]")


def llm_name(name: str) -> str:
    """A name OpenAI-compatible servers accept (``^[a-zA-Z0-9_-]{1,64}$``): device names have dots."""
    return _LLM_NAME_BAD.sub("_", name)[:64]


class ToolDef(Protocol):
    """What a model needs to know of a tool."""

    name: str
    description: str
    parameters: dict[str, Any]
    examples: Sequence[Example]


class ToolSet(Protocol):
    """Tools offered to the model in one round."""

    def __iter__(self) -> Iterator[ToolDef]: ...

    def __len__(self) -> int: ...

    def get(self, name: str) -> ToolDef | None: ...

    def llm_tools(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class CatalogTool:
    name: str
    description: str
    parameters: dict[str, Any]
    examples: tuple[Example, ...] = ()


class ToolCatalog:
    """A ToolSet from OpenAI tool definitions (what a worker receives): described, not runnable here."""

    def __init__(self, definitions: list[dict[str, Any]], examples: dict[str, Sequence[Example]] | None = None):
        self._defs = definitions
        self._tools: dict[str, CatalogTool] = {}
        for d in definitions:
            fn = d.get("function") if isinstance(d, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                continue
            name = fn["name"]
            params = fn.get("parameters") if isinstance(fn.get("parameters"), dict) else {}
            shots = tuple((str(t), a) for t, a in (examples or {}).get(name, ()) if isinstance(a, dict))
            self._tools[name] = CatalogTool(name, str(fn.get("description") or ""), params, shots)

    def __iter__(self) -> Iterator[CatalogTool]:
        return iter(self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)

    def get(self, name: str) -> CatalogTool | None:
        return self._tools.get(name)

    def llm_tools(self) -> list[dict[str, Any]]:
        return self._defs


def tool_examples(tools: ToolSet) -> dict[str, list[Example]]:
    """Each tool's few-shot examples by LLM name (sent along with escalated tool definitions)."""
    return {llm_name(t.name): list(t.examples) for t in tools if t.examples}


# Few-shot hints for the firmware's standard tools (names from main/mcp_server.cc and common boards).
FIRMWARE_EXAMPLES: dict[str, tuple[Example, ...]] = {
    "self.audio_speaker.set_volume": (("turn the sound to 40 percent", {"volume": 40}),
                                      ("silence the speaker completely", {"volume": 0})),
    "self.screen.set_brightness": (("dim the display to 25", {"brightness": 25}),),
    "self.screen.set_theme": (("switch the screen to dark mode", {"theme": "dark"}),),
    "self.light.set_rgb": (("make the lamp blue", {"r": 0, "g": 0, "b": 255}),
                           ("lamp colour yellow", {"r": 255, "g": 255, "b": 0}),
                           ("I want a purple light", {"r": 128, "g": 0, "b": 128})),
    "self.light.turn_on": (("switch the lamp on", {}),),
    "self.light.turn_off": (("lights off please", {}),),
    "self.battery.get_level": (("how much charge is left", {}),),
    "self.get_device_status": (("give me a status report of the device", {}),),
}
_FIRMWARE_BY_LLM_NAME = {llm_name(k): v for k, v in FIRMWARE_EXAMPLES.items()}


def examples_of(tool: ToolDef) -> tuple[Example, ...]:
    """The tool's own examples, else known firmware ones (by device name, or the LLM name a worker sees)."""
    return tuple(tool.examples) or FIRMWARE_EXAMPLES.get(tool.name) or _FIRMWARE_BY_LLM_NAME.get(tool.name, ())


class ToolCaller(Protocol):
    """One LLM round: streams text and/or ends with tool_calls (native or grammar-forced)."""

    def step(self, messages: list[dict[str, Any]], tools: ToolSet | None, *, max_tokens: int,
             temperature: float) -> AsyncIterator[ChatDelta]: ...


class NativeToolCaller:
    """Servers with real tool calling (vLLM, Ollama, OpenAI, llama.cpp with a tool-aware template)."""

    def __init__(self, llm: ChatClient):
        self.llm = llm

    def step(self, messages, tools, *, max_tokens, temperature):
        defs = tools.llm_tools() if tools is not None and len(tools) else None
        return self.llm.stream(messages, tools=defs, max_tokens=max_tokens, temperature=temperature)


def caller_for(llm: ChatClient, mode: ToolCallMode, kind: str = "llamacpp") -> ToolCaller:
    """``auto``: grammar-forced for llama.cpp backends (small local models), native for the others."""
    from shared.grammar_tools import GrammarToolCaller

    if mode == "grammar" or (mode == "auto" and kind == "llamacpp"):
        return GrammarToolCaller(llm)
    return NativeToolCaller(llm)
