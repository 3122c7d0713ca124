"""Server tool: the current time and date where the device is (its configured timezone)."""

from __future__ import annotations

from datetime import datetime, timezone as dt_timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge.tools.registry import Tool, ToolContext, ToolError

NAME = "get_time"


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolError("arguments", f"unknown timezone {name!r}") from None


def now_text(tz_name: str, now: datetime | None = None) -> str:
    """e.g. ``It is 14:05 on Monday, 23 November 2026 (Europe/Berlin, UTC+01:00).``: what the model reads back
    (and, without the parenthesis, what a small model's turn speaks directly)."""
    zone = _zone(tz_name)
    local = (now or datetime.now(dt_timezone.utc)).astimezone(zone)
    offset = local.strftime("%z")
    return f"It is {local:%H:%M} on {local:%A, %d %B %Y} ({tz_name}, UTC{offset[:3]}:{offset[3:]})."


async def _handle(args: dict[str, Any], ctx: ToolContext) -> str:
    return now_text(args.get("timezone") or ctx.timezone)


def clock_tool() -> Tool:
    return Tool(
        name=NAME,
        description="Get the current local time, day of the week and date (day, month, year).",
        parameters={"type": "object",
                    "properties": {"timezone": {"type": "string",
                                                "description": "IANA timezone, only if the user names a place"}}},
        handler=_handle,
        examples=(("what's the time right now", {}), ("which day of the week is it today", {})),
    )
