"""One device's conversation history: one owner (the session), one window (``edge.llm.history_turns``)."""

from __future__ import annotations

from collections import deque
from typing import Any


class Conversation:
    """The last ``turns`` exchanges; a turn reads :meth:`window` and the session adds the finished exchange."""

    def __init__(self, turns: int):
        self._turns: deque[tuple[str, str]] = deque(maxlen=max(turns, 0))
        self.pending: Any = None  # a tool call asked about ("Set the light to blue?"), for the next turn only

    def add(self, user: str, reply: str) -> None:
        if user and self._turns.maxlen:
            self._turns.append((user, reply))

    def window(self) -> list[dict]:
        """Chat messages of the kept exchanges, oldest first (an exchange without reply has no assistant line)."""
        msgs: list[dict] = []
        for user, reply in self._turns:
            msgs.append({"role": "user", "content": user})
            if reply:
                msgs.append({"role": "assistant", "content": reply})
        return msgs
