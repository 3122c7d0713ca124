"""Server tool template: an operator-configured HTTP API (weather, news, ...) as a tool.

The operator writes the URL with ``{argument}`` placeholders, the arguments' JSON
schema and where the answer sits in the JSON reply; the model only fills the
arguments. Every network problem (offline, timeout, HTTP error, bad JSON) becomes
a ToolError, so the user hears an apology instead of a hang.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any
from urllib.parse import quote

import aiohttp

from edge.tools.registry import Tool, ToolContext, ToolError
from shared.topology import HttpToolSpec, SecretRef

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _fill(template: str, values: dict[str, Any], quote_values: bool) -> str:
    def sub(m: re.Match) -> str:
        if m.group(1) not in values:
            raise ToolError("arguments", f"missing value for {{{m.group(1)}}}")
        text = str(values[m.group(1)])
        return quote(text, safe="") if quote_values else text

    return _PLACEHOLDER.sub(sub, template)


def _fill_body(node: Any, values: dict[str, Any]) -> Any:
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        return values.get(whole.group(1)) if whole else _fill(node, values, False)
    if isinstance(node, dict):
        return {k: _fill_body(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill_body(v, values) for v in node]
    return node


def extract(doc: Any, path: str) -> Any:
    """``a.b.0.c`` into nested dicts/lists; ToolError when the reply does not have it."""
    node = doc
    for part in path.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise ToolError("malformed", f"reply has no {path!r}")
    return node


class HttpTool:
    """Runs one HttpToolSpec; one aiohttp session per call keeps it free of loop-bound state."""

    def __init__(self, spec: HttpToolSpec):
        self.spec = spec

    async def __call__(self, args: dict[str, Any], ctx: ToolContext) -> str:
        spec = self.spec
        values = {"device_id": ctx.device_id or "", "timezone": ctx.timezone, **args}
        url = _fill(spec.url, values, quote_values=True)
        headers = {k: v.resolve() if isinstance(v, SecretRef) else v for k, v in spec.headers.items()}
        body = _fill_body(spec.body, values) if spec.body is not None else None
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=spec.timeout_s)) as http:
                async with http.request(spec.method, url, headers=headers, json=body) as resp:
                    if resp.status >= 400:
                        raise ToolError("failed", f"{spec.name}: HTTP {resp.status}")
                    raw = await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ToolError("failed", f"{spec.name}: service unreachable ({type(exc).__name__})") from None
        if spec.result_path is None:
            return (spec.result_prefix + raw.strip())[: spec.max_chars]
        try:
            doc = json.loads(raw)
        except ValueError:
            raise ToolError("malformed", f"{spec.name}: reply is not JSON") from None
        value = extract(doc, spec.result_path)
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return (spec.result_prefix + text)[: spec.max_chars]


def http_tool(spec: HttpToolSpec) -> Tool:
    return Tool(name=spec.name, description=spec.description, parameters=spec.parameters,
                handler=HttpTool(spec), examples=tuple((u, a) for u, a in spec.examples))
