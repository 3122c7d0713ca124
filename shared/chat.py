"""Streaming chat against any OpenAI-compatible server (llama.cpp, vLLM, Ollama /v1) or Ollama's own API.

The edge's local LLM and every cloud backend use this one interface, so the
turn pipeline and the workers never care which server answers:

    async for delta in client.stream(messages, max_tokens=60, temperature=0.3):
        delta.text, delta.tool_calls, delta.logprob, delta.finish_reason, delta.usage

Tool calls arrive in fragments over the stream; the client assembles them and
hands them over complete on the final delta. Every failure (connection, HTTP
status, timeout, malformed answer) is a :class:`ChatError`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit, urlunsplit

from shared.topology import BackendSpec, LlmSpec
from shared.wire import ToolCall, new_id

log = logging.getLogger("shared.chat")


class ChatError(Exception):
    """A chat request failed; ``retryable`` is False for errors the caller caused (bad request)."""

    def __init__(self, message: str, retryable: bool = True):
        super().__init__(message)
        self.retryable = retryable


@dataclass
class ChatDelta:
    """One streamed step. ``logprob`` is the mean token log-probability of this step (when asked for)."""

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprob: float | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


class _ToolCallAssembler:
    """Joins OpenAI's streamed tool-call fragments (by index) into whole calls."""

    def __init__(self) -> None:
        self.parts: dict[int, dict[str, str]] = {}

    def feed(self, fragments: Any) -> None:
        for frag in fragments or []:
            slot = self.parts.setdefault(getattr(frag, "index", None) or 0, {"id": "", "name": "", "arguments": ""})
            if getattr(frag, "id", None):
                slot["id"] = frag.id
            fn = getattr(frag, "function", None)
            if fn is not None:
                slot["name"] += fn.name or ""
                slot["arguments"] += fn.arguments or ""

    def calls(self) -> list[ToolCall]:
        return [ToolCall(p["id"] or new_id(), p["name"], p["arguments"] or "{}")
                for _, p in sorted(self.parts.items()) if p["name"]]


class ChatClient:
    """OpenAI-compatible streaming chat (``openai.AsyncOpenAI`` with ``base_url``)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, name: str = "",
                 timeout: float = 60.0, connect_timeout: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = name or model
        self.api_key = api_key or "not-needed"
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._client = None

    @classmethod
    def from_spec(cls, spec: LlmSpec | BackendSpec, **kw) -> "ChatClient":
        api_key = spec.api_key.resolve() if spec.api_key else None
        return cls(spec.url, spec.model, api_key=api_key, name=getattr(spec, "name", "") or spec.model, **kw)

    def _openai(self):
        if self._client is None:
            import httpx
            import openai

            self._client = openai.AsyncOpenAI(
                base_url=self.base_url, api_key=self.api_key, max_retries=0,
                timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout))
        return self._client

    async def stream(self, messages: list[dict], *, tools: list[dict] | None = None, max_tokens: int,
                     temperature: float, logprobs: bool = False) -> AsyncIterator[ChatDelta]:
        """Stream the answer to ``messages``; the last delta carries finish_reason (and usage if known)."""
        import openai

        kwargs: dict[str, Any] = dict(model=self.model, messages=messages, max_tokens=max_tokens,
                                      temperature=temperature, stream=True,
                                      stream_options={"include_usage": True})
        if tools:
            kwargs["tools"] = tools
        if logprobs:
            kwargs.update(logprobs=True, top_logprobs=1)
        tools_acc = _ToolCallAssembler()
        finish: str | None = None
        usage: dict[str, int] | None = None
        steps = 0
        try:
            response = await self._openai().chat.completions.create(**kwargs)
            async with response as chunks:
                async for chunk in chunks:
                    if chunk.usage is not None:
                        usage = {k: v for k, v in chunk.usage.model_dump().items() if isinstance(v, int)}
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    finish = choice.finish_reason or finish
                    tools_acc.feed(choice.delta.tool_calls if choice.delta else None)
                    text = (choice.delta.content if choice.delta else None) or ""
                    if text:
                        steps += 1
                        yield ChatDelta(text=text, logprob=_mean_logprob(choice.logprobs))
        except openai.BadRequestError as exc:
            raise ChatError(f"{self.name}: request refused: {_short(exc)}", retryable=False) from None
        except openai.APIStatusError as exc:
            raise ChatError(f"{self.name}: HTTP {exc.status_code}: {_short(exc)}") from None
        except openai.APITimeoutError:
            raise ChatError(f"{self.name}: timed out after {self.timeout:.0f}s") from None
        except openai.APIConnectionError as exc:
            raise ChatError(f"{self.name}: cannot connect to {self.base_url}: {_short(exc)}") from None
        except openai.OpenAIError as exc:
            raise ChatError(f"{self.name}: {_short(exc)}") from None
        calls = tools_acc.calls()
        if usage is None:  # llama.cpp's server sends no usage when streaming: one chunk is one token there
            usage = {"completion_tokens": steps}
        yield ChatDelta(tool_calls=calls, finish_reason=finish or ("tool_calls" if calls else "stop"), usage=usage)

    async def complete_json(self, messages: list[dict], schema: dict[str, Any], max_tokens: int) -> str:
        """One schema-constrained completion (not streamed; llama.cpp's ``response_format`` grammar): its text."""
        import openai

        try:
            resp = await self._openai().chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=0.0,
                extra_body={"response_format": {"type": "json_object", "schema": schema}})
        except openai.OpenAIError as exc:
            raise ChatError(f"{self.name}: structured completion failed: {str(exc)[:200]}") from None
        return resp.choices[0].message.content or ""

    async def health(self) -> bool:
        """True if the server lists models (cheap: no generation)."""
        try:
            await asyncio.wait_for(self._openai().models.list(), self.connect_timeout)
            return True
        except Exception:  # any failure means unhealthy; the breaker and metrics record it
            return False

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class OllamaChatClient(ChatClient):
    """Ollama's native API (``ollama.AsyncClient``): tool calls and options the /v1 shim lacks."""

    @property
    def host(self) -> str:
        parts = urlsplit(self.base_url)
        path = parts.path[:-3] if parts.path.endswith("/v1") else parts.path
        return urlunsplit((parts.scheme, parts.netloc, path, "", ""))

    def _ollama(self):
        if self._client is None:
            import ollama

            self._client = ollama.AsyncClient(host=self.host, timeout=self.timeout)
        return self._client

    async def stream(self, messages: list[dict], *, tools: list[dict] | None = None, max_tokens: int,
                     temperature: float, logprobs: bool = False) -> AsyncIterator[ChatDelta]:
        import httpx
        import ollama

        calls: list[ToolCall] = []
        try:
            parts = await self._ollama().chat(
                model=self.model, messages=_to_ollama_messages(messages), tools=tools or None, stream=True,
                options={"num_predict": max_tokens, "temperature": temperature})
            async for part in parts:
                msg = part.message
                for call in msg.tool_calls or []:
                    calls.append(ToolCall(new_id(), call.function.name, json.dumps(dict(call.function.arguments))))
                if msg.content:
                    yield ChatDelta(text=msg.content)
                if part.done:
                    usage = {"prompt_tokens": part.prompt_eval_count or 0,
                             "completion_tokens": part.eval_count or 0}
                    reason = "tool_calls" if calls else ("length" if part.done_reason == "length" else "stop")
                    yield ChatDelta(tool_calls=calls, finish_reason=reason, usage=usage)
                    return
        except ollama.ResponseError as exc:
            raise ChatError(f"{self.name}: HTTP {exc.status_code}: {exc.error}",
                            retryable=exc.status_code >= 500) from None
        except (httpx.HTTPError, ConnectionError) as exc:
            raise ChatError(f"{self.name}: cannot reach {self.host}: {_short(exc)}") from None
        raise ChatError(f"{self.name}: stream ended without a final message")

    async def health(self) -> bool:
        try:
            await asyncio.wait_for(self._ollama().list(), self.connect_timeout)
            return True
        except Exception:  # any failure means unhealthy
            return False

    async def aclose(self) -> None:
        self._client = None  # ollama.AsyncClient holds a pooled httpx client that closes with the loop


class PooledChat:
    """Several servers of one model behind the one client interface: each request goes to the usable server
    with the fewest requests in flight (the next one in turn on a tie).

    Why: llama-cpp-python's server answers one request at a time, so one server is one queue however many
    devices talk; the edge runs one server per core it gives the model (edge/threads.py) and spreads the
    turns here. ``usable(i)`` says whether server ``i`` serves now (its supervisor's view); when none does,
    every server is tried, and the request fails as it would have on one."""

    def __init__(self, clients: list[ChatClient], usable: Callable[[int], bool] = lambda i: True):
        if not clients:
            raise ValueError("a pool needs at least one client")
        self.clients = clients
        self._usable = usable
        self.inflight = [0] * len(clients)
        self._next = 0

    @property
    def model(self) -> str:
        return self.clients[0].model

    @property
    def name(self) -> str:
        return self.clients[0].name

    @property
    def base_url(self) -> str:
        return self.clients[0].base_url

    def _pick(self) -> int:
        n = len(self.clients)
        candidates = [i for i in range(n) if self._usable(i)] or list(range(n))
        chosen = min(candidates, key=lambda i: (self.inflight[i], (i - self._next) % n))
        self._next = (chosen + 1) % n
        return chosen

    async def stream(self, messages: list[dict], **kw: Any) -> AsyncIterator[ChatDelta]:
        i = self._pick()
        self.inflight[i] += 1
        try:
            async for delta in self.clients[i].stream(messages, **kw):
                yield delta
        finally:
            self.inflight[i] -= 1

    async def complete_json(self, messages: list[dict], schema: dict[str, Any], max_tokens: int) -> str:
        i = self._pick()
        self.inflight[i] += 1
        try:
            return await self.clients[i].complete_json(messages, schema, max_tokens)
        finally:
            self.inflight[i] -= 1

    async def health(self) -> bool:
        """True if any server answers."""
        return any(await asyncio.gather(*(c.health() for c in self.clients)))

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients))


def import_client_library() -> None:
    """Import the OpenAI client now (call it in a thread at start-up).

    It is imported on first use so that tools and tests that never chat do not pay for it, but that first
    use is a coroutine: under load at 75 devices the ``import openai`` of the first tool turn held the edge's
    event loop for 0.5-0.8 s (edge.loop_watch's stack), and every session's audio and ``/health`` waited."""
    import httpx  # noqa: F401
    import openai  # noqa: F401


def build_chat_client(spec: LlmSpec | BackendSpec, **kw) -> ChatClient:
    """The client a spec asks for: Ollama's native API or the OpenAI-compatible one."""
    native_ollama = getattr(spec, "backend", None) == "ollama"
    return (OllamaChatClient if native_ollama else ChatClient).from_spec(spec, **kw)


def _mean_logprob(logprobs: Any) -> float | None:
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    values = [t.logprob for t in content or [] if t.logprob is not None]
    return sum(values) / len(values) if values else None


def _to_ollama_messages(messages: list[dict]) -> list[dict]:
    """OpenAI tool-call messages carry JSON text arguments; Ollama wants objects."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{"function": {"name": c["function"]["name"],
                                             "arguments": json.loads(c["function"].get("arguments") or "{}")}}
                               for c in m["tool_calls"]]
        if m.get("content") is None:
            m["content"] = ""
        out.append(m)
    return out


def _short(exc: BaseException, n: int = 300) -> str:
    return str(exc).replace("\n", " ")[:n]
