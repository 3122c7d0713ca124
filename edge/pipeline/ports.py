"""What the turn needs from the world, as small interfaces: the device's output and a source of answer text.

The pipeline depends on these, not on the WebSocket or the models, so the turn can be read
(and tested) on its own; :mod:`edge.device.output` and :mod:`edge.stages.answering` implement them.
"""

from __future__ import annotations

from typing import AsyncIterator, Protocol, Sequence

from edge.device.protocol import ServerMessage


class DeviceOutput(Protocol):
    """Where a turn's messages and audio go (implemented by :class:`edge.device.output.PacedOutput`)."""

    sample_rate: int
    frame_ms: int
    tts_open: bool

    @property
    def closed(self) -> bool: ...

    async def send(self, msg: ServerMessage) -> None: ...

    async def send_audio(self, frames: Sequence[bytes]) -> None: ...

    async def drain(self) -> None: ...

    def clear(self) -> None: ...


class AnswerSource(Protocol):
    """A stream of answer text: the local model, the cloud (with its fallback), tool rounds, or a fixed phrase.

    ``stream()`` is iterated once; a source that cannot produce text raises
    :class:`edge.pipeline.errors.AnswerFailed`. ``answered_by`` may change while
    streaming (a cloud answer that fell back is the edge's)."""

    answered_by: str
    reason: str

    def stream(self) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...
