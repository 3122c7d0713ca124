"""A simulated xiaozhi board's MCP server: the tools a real board exposes, answered like the firmware does.

Mirrors the firmware's ``McpServer`` (main/mcp_server.cc): ``initialize`` returns
protocolVersion/capabilities/serverInfo; ``tools/list`` pages by payload size and
returns ``nextCursor`` = the name of the first tool that did not fit; user-only
tools are listed only with ``withUserTools``; ``tools/call`` checks each property
(type, integer range, required unless it has a default) and answers
``{"content":[{"type":"text","text":...}],"isError":false}`` or a JSON-RPC error.
Notifications get no reply. Every call received is recorded in ``calls``.

    board = SimBoard()
    reply = board.handle({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": ""}})

Failure injection for tests: ``silent`` tools never answer (``handle`` returns
None), ``malformed`` tools answer with a result that is not MCP-shaped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

MAX_PAYLOAD = 8000  # the firmware's tools/list page limit in bytes


@dataclass(frozen=True)
class Prop:
    """One firmware ``Property``: boolean, integer (optionally ranged) or string, required unless defaulted."""

    name: str
    type: str  # boolean | integer | string
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None

    def schema(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.default is not None:
            out["default"] = self.default
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        return out

    def accept(self, value: Any) -> Any:
        """The value if its JSON type fits (firmware: cJSON_IsBool/IsNumber/IsString); None otherwise."""
        if self.type == "boolean":
            return value if isinstance(value, bool) else None
        if self.type == "integer":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            value = int(value)
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"Property '{self.name}': value {value} is below minimum {self.minimum}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"Property '{self.name}': value {value} exceeds maximum {self.maximum}")
            return value
        return value if isinstance(value, str) else None


@dataclass
class SimTool:
    name: str
    description: str
    props: list[Prop]
    run: Callable[[dict[str, Any]], Any]  # returns bool | int | str | dict (dict: sent as JSON text)
    user_only: bool = False

    def to_json(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object", "properties": {p.name: p.schema() for p in self.props}}
        required = [p.name for p in self.props if p.default is None]
        if required:
            schema["required"] = required
        out: dict[str, Any] = {"name": self.name, "description": self.description, "inputSchema": schema}
        if self.user_only:
            out["annotations"] = {"audience": ["user"]}
        return out


@dataclass
class BoardState:
    volume: int = 70
    brightness: int = 80
    theme: str = "light"
    light_on: bool = False
    rgb: tuple[int, int, int] = (255, 255, 255)
    battery: int = 87
    charging: bool = False


@dataclass
class ReceivedCall:
    name: str
    arguments: dict[str, Any]
    ok: bool
    reply: str


class SimBoard:
    """The board's MCP server. ``handle(payload)`` -> reply payload or None; ``calls`` lists tools/call requests."""

    def __init__(self, name: str = "sim-board", version: str = "1.9.0", page_bytes: int = MAX_PAYLOAD,
                 silent: set[str] | frozenset[str] = frozenset(), malformed: set[str] | frozenset[str] = frozenset(),
                 extra_tools: list[SimTool] | None = None, verbose: bool = False):
        self.name = name
        self.version = version
        self.page_bytes = page_bytes
        self.silent = set(silent)
        self.malformed = set(malformed)
        self.verbose = verbose
        self.state = BoardState()
        self.calls: list[ReceivedCall] = []
        self.requests: list[dict[str, Any]] = []  # every request payload, in order
        self.initialized_with: dict[str, Any] | None = None
        self.tools: list[SimTool] = self._common_tools() + list(extra_tools or [])

    # ------------------------------------------------------------ the tools
    def _status(self, _: dict) -> dict:
        s = self.state
        return {"audio_speaker": {"volume": s.volume},
                "screen": {"brightness": s.brightness, "theme": s.theme},
                "light": {"on": s.light_on, "rgb": list(s.rgb)},
                "battery": {"level": s.battery, "charging": s.charging},
                "network": {"type": "wifi", "signal": "strong"}}

    def _set(self, **changes: Any) -> bool:
        for key, value in changes.items():
            setattr(self.state, key, value)
        return True

    def _common_tools(self) -> list[SimTool]:
        return [
            SimTool("self.get_device_status",
                    "Provides the real-time information of the device, including the current status of the audio "
                    "speaker, screen, light, battery, network, etc.", [], self._status),
            SimTool("self.audio_speaker.set_volume", "Set the volume of the audio speaker (0-100).",
                    [Prop("volume", "integer", minimum=0, maximum=100)],
                    lambda a: self._set(volume=a["volume"])),
            SimTool("self.screen.set_brightness", "Set the brightness of the screen (0-100).",
                    [Prop("brightness", "integer", minimum=0, maximum=100)],
                    lambda a: self._set(brightness=a["brightness"])),
            SimTool("self.screen.set_theme", "Set the theme of the screen. The theme can be `light` or `dark`.",
                    [Prop("theme", "string")], self._set_theme),
            SimTool("self.light.set_rgb", "Set the color of the light as red, green and blue values (0-255) "
                    "and turn it on.",
                    [Prop("r", "integer", minimum=0, maximum=255), Prop("g", "integer", minimum=0, maximum=255),
                     Prop("b", "integer", minimum=0, maximum=255)],
                    lambda a: self._set(rgb=(a["r"], a["g"], a["b"]), light_on=True)),
            SimTool("self.light.turn_on", "Turn the light on.", [], lambda a: self._set(light_on=True)),
            SimTool("self.light.turn_off", "Turn the light off.", [], lambda a: self._set(light_on=False)),
            SimTool("self.battery.get_level", "Get the battery level in percent and whether it is charging.", [],
                    lambda a: {"level": self.state.battery, "charging": self.state.charging}),
            SimTool("self.get_system_info", "Get the system information", [],
                    lambda a: {"board": self.name, "version": self.version}, user_only=True),
            SimTool("self.reboot", "Reboot the system", [], lambda a: True, user_only=True),
        ]

    def _set_theme(self, args: dict) -> bool:
        if args["theme"] not in ("light", "dark"):
            return False
        return self._set(theme=args["theme"])

    def tool(self, name: str) -> SimTool | None:
        return next((t for t in self.tools if t.name == name), None)

    # ------------------------------------------------------------ JSON-RPC
    def handle(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Answer one JSON-RPC payload like the firmware; None where the firmware sends nothing."""
        if not isinstance(payload, dict) or payload.get("jsonrpc") != "2.0":
            return None
        method = payload.get("method")
        if not isinstance(method, str) or method.startswith("notifications"):
            return None
        params = payload.get("params")
        rid = payload.get("id")
        if (params is not None and not isinstance(params, dict)) or isinstance(rid, bool) \
                or not isinstance(rid, (int, float)):
            return None
        rid = int(rid)
        params = params or {}
        self.requests.append(payload)
        if method == "initialize":
            self.initialized_with = params
            return self._result(rid, {"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                                      "serverInfo": {"name": self.name, "version": self.version}})
        if method == "tools/list":
            cursor = params.get("cursor") if isinstance(params.get("cursor"), str) else ""
            return self._list(rid, cursor, params.get("withUserTools") is True)
        if method == "tools/call":
            if not isinstance(params.get("name"), str):
                return self._error(rid, "Missing name")
            args = params.get("arguments")
            if args is not None and not isinstance(args, dict):
                return self._error(rid, "Invalid arguments")
            return self._call(rid, params["name"], args or {})
        return self._error(rid, f"Method not implemented: {method}")

    def _list(self, rid: int, cursor: str, with_user: bool) -> dict[str, Any]:
        found = not cursor
        page: list[dict] = []
        size = len('{"tools":[')
        next_cursor = ""
        for tool in self.tools:
            if not found:
                if tool.name != cursor:
                    continue
                found = True
            if tool.user_only and not with_user:
                continue
            item = tool.to_json()
            item_size = len(json.dumps(item, separators=(",", ":"))) + 1
            if size + item_size + 30 > self.page_bytes:
                next_cursor = tool.name
                break
            page.append(item)
            size += item_size
        if not page and self.tools and next_cursor:
            return self._error(rid, f"Failed to add tool {next_cursor} because of payload size limit")
        result: dict[str, Any] = {"tools": page}
        if next_cursor:
            result["nextCursor"] = next_cursor
        return self._result(rid, result)

    def _call(self, rid: int, name: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
        tool = self.tool(name)
        if tool is None:
            self._record(name, arguments, False, f"Unknown tool: {name}")
            return self._error(rid, f"Unknown tool: {name}")
        values: dict[str, Any] = {}
        try:
            for prop in tool.props:
                value = prop.accept(arguments.get(prop.name)) if prop.name in arguments else None
                if value is None:
                    if prop.default is None:
                        raise ValueError(f"Missing valid argument: {prop.name}")
                    value = prop.default
                values[prop.name] = value
        except ValueError as exc:
            self._record(name, arguments, False, str(exc))
            return self._error(rid, str(exc))
        if name in self.silent:
            self._record(name, arguments, False, "(no reply)")
            return None
        if name in self.malformed:
            self._record(name, arguments, False, "(malformed reply)")
            return self._result(rid, {"content": "not a list", "isError": "maybe"})
        value = tool.run(values)
        text = json.dumps(value, separators=(",", ":")) if isinstance(value, dict) else (
            ("true" if value else "false") if isinstance(value, bool) else str(value))
        self._record(name, values, True, text)
        return self._result(rid, {"content": [{"type": "text", "text": text}], "isError": False})

    def _record(self, name: str, arguments: dict[str, Any], ok: bool, reply: str) -> None:
        self.calls.append(ReceivedCall(name, dict(arguments), ok, reply))
        if self.verbose:
            print(f"[{self.name}] tools/call {name} {json.dumps(arguments)} -> {reply}", flush=True)

    @staticmethod
    def _result(rid: int, result: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    @staticmethod
    def _error(rid: int, message: str) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": rid, "error": {"message": message}}


if __name__ == "__main__":  # print the board's tool list and one call, as a quick look
    board = SimBoard(verbose=True)
    print(json.dumps(board.handle({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"cursor": ""}}),
                     indent=1))
    board.handle({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                  "params": {"name": "self.audio_speaker.set_volume", "arguments": {"volume": 30}}})
