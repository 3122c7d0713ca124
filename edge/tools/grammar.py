"""Tool calling for small local models: a grammar-forced JSON decision, returned as OpenAI-style tool_calls.

SmolLM2-class models have no tool-call format in their chat template, and
llama.cpp's server cannot parse one out of free text for them. Instead the
model answers one constrained question first: llama.cpp turns a JSON schema
(``response_format: {"type": "json_object", "schema": ...}``) into a grammar, the
schema being "one of: {tool: <name>, arguments: <that tool's parameters>} or
{tool: none}". Few-shot examples (each tool's ``examples``, plus known firmware
tools) sit in the prompt. The decision comes back as a ``ToolCall``; "none"
falls through to an ordinary streamed answer, so the tool loop above is the
same for these models and for vLLM/Ollama models with native tool calling.
"""

from __future__ import annotations

import json
import logging
from typing import Any, AsyncIterator

from edge.tools.registry import Tool, ToolRegistry, llm_name
from shared.chat import ChatClient, ChatDelta, ChatError
from shared.log import log_event
from shared.wire import ToolCall, new_id

log = logging.getLogger("edge.tools.grammar")

NO_TOOL = "none"

# Few-shot hints for the firmware's standard tools (names from main/mcp_server.cc and common boards).
FIRMWARE_EXAMPLES: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "self.audio_speaker.set_volume": (("turn the sound to 40 percent", {"volume": 40}),),
    "self.screen.set_brightness": (("dim the display to 25", {"brightness": 25}),),
    "self.screen.set_theme": (("switch the screen to dark mode", {"theme": "dark"}),),
    "self.light.set_rgb": (("make the lamp blue", {"r": 0, "g": 0, "b": 255}),),
    "self.light.turn_on": (("switch the lamp on", {}),),
    "self.light.turn_off": (("lights off please", {}),),
    "self.battery.get_level": (("how much charge is left", {}),),
    "self.get_device_status": (("what is the current volume", {}),),
}
NO_TOOL_EXAMPLES = ("who wrote romeo and juliet", "good morning to you", "can you sing me something")

ROUTER_PROMPT = ("You decide which tool a voice assistant must call for the user's request. Tools:\n{tools}\n"
                 "- none: no tool fits (questions, chat, anything else).\n"
                 "Reply with JSON: the tool and its arguments.")


def _examples(tool: Tool) -> tuple[tuple[str, dict[str, Any]], ...]:
    return tool.examples or FIRMWARE_EXAMPLES.get(tool.name, ())


def decision_schema(registry: ToolRegistry) -> dict[str, Any]:
    """``{"tool": <name>, "arguments": {...}}`` for each tool, or ``{"tool": "none"}``."""
    options: list[dict[str, Any]] = [
        {"type": "object", "properties": {"tool": {"const": llm_name(t.name)}, "arguments": t.parameters},
         "required": ["tool", "arguments"]} for t in registry]
    options.append({"type": "object", "properties": {"tool": {"const": NO_TOOL}}, "required": ["tool"]})
    return {"anyOf": options}


def router_messages(registry: ToolRegistry, user_text: str) -> list[dict[str, str]]:
    """System prompt listing the tools, few-shot turns, then the request."""
    lines = [f"- {llm_name(t.name)}: {t.description.splitlines()[0] if t.description else ''}" for t in registry]
    msgs = [{"role": "system", "content": ROUTER_PROMPT.format(tools="\n".join(lines))}]
    shots: list[tuple[str, dict[str, Any]]] = []
    for tool in registry:
        for text, args in _examples(tool)[:1]:
            shots.append((text, {"tool": llm_name(tool.name), "arguments": args}))
    shots[1:1] = [(NO_TOOL_EXAMPLES[0], {"tool": NO_TOOL})]
    shots.append((NO_TOOL_EXAMPLES[1], {"tool": NO_TOOL}))
    for text, answer in shots:
        msgs += [{"role": "user", "content": text}, {"role": "assistant", "content": json.dumps(answer)}]
    msgs.append({"role": "user", "content": user_text})
    return msgs


def plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with tool rounds rewritten as text, for chat templates without tool roles."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            done = ", ".join(f"{c['function']['name']}({c['function'].get('arguments') or ''})"
                             for c in m["tool_calls"])
            out.append({"role": "assistant", "content": f"(I used {done}.)"})
        elif m.get("role") == "tool":
            out.append({"role": "system", "content": f"Tool result: {m.get('content', '')}\n"
                                                     "Tell the user the outcome in one short sentence."})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def last_user_text(messages: list[dict[str, Any]]) -> str:
    return next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")


class JsonCompleter:
    """Schema-constrained (non-streamed) completions from the OpenAI-compatible server behind a ChatClient."""

    def __init__(self, llm: ChatClient):
        self.llm = llm
        self._client = None

    async def complete(self, messages: list[dict[str, Any]], schema: dict[str, Any], max_tokens: int) -> Any:
        import openai

        if self._client is None:
            self._client = openai.AsyncOpenAI(base_url=self.llm.base_url, api_key=self.llm.api_key,
                                              max_retries=0, timeout=self.llm.timeout)
        try:
            resp = await self._client.chat.completions.create(
                model=self.llm.model, messages=messages, max_tokens=max_tokens, temperature=0.0,
                extra_body={"response_format": {"type": "json_object", "schema": schema}})
        except openai.OpenAIError as exc:
            raise ChatError(f"{self.llm.name}: structured completion failed: {str(exc)[:200]}") from None
        text = resp.choices[0].message.content or ""
        try:
            return json.loads(text)
        except ValueError:
            return None  # cut off by max_tokens: treated as "no tool"

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class GrammarToolCaller:
    """One LLM round of the tool loop for models without native tool calling."""

    def __init__(self, llm: ChatClient, decision_max_tokens: int = 80):
        self.llm = llm
        self.json = JsonCompleter(llm)
        self.decision_max_tokens = decision_max_tokens

    async def decide(self, messages: list[dict[str, Any]], registry: ToolRegistry) -> ToolCall | None:
        """The forced decision for the last user request: a ToolCall, or None for "no tool"."""
        doc = await self.json.complete(router_messages(registry, last_user_text(messages)),
                                       decision_schema(registry), self.decision_max_tokens)
        name = doc.get("tool") if isinstance(doc, dict) else None
        log_event(log, "tool decision", decision=doc)
        if not isinstance(name, str) or name == NO_TOOL:
            return None
        return ToolCall(new_id(), name, json.dumps(doc.get("arguments") or {}))

    async def step(self, messages: list[dict[str, Any]], registry: ToolRegistry | None, *, max_tokens: int,
                   temperature: float) -> AsyncIterator[ChatDelta]:
        """Decide (only for a fresh user request, one tool round per turn), else stream the spoken answer."""
        fresh = bool(messages) and messages[-1].get("role") == "user"
        if registry is not None and len(registry) and fresh:
            call = await self.decide(messages, registry)
            if call is not None:
                yield ChatDelta(tool_calls=[call], finish_reason="tool_calls")
                return
        async for delta in self.llm.stream(plain_messages(messages), max_tokens=max_tokens,
                                           temperature=temperature):
            yield delta
