"""The command lines: `python -m edge serve` error handling and `scripts/device_sim.py` end to end."""

from __future__ import annotations

import asyncio
import json
import sys
import wave
from pathlib import Path

import numpy as np

from tests.fixtures_edge import tone

ROOT = Path(__file__).resolve().parent.parent


async def _run(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def _write_wav(path: Path, pcm: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


async def test_edge_serve_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "topology.yaml"
    bad.write_text("version: 1\nregions: []\n")
    code, _, err = await _run("-m", "edge", "serve", "--config", str(bad))
    assert code == 2 and "Traceback" not in err
    assert err.startswith("edge: bad configuration:") and len(err.strip().splitlines()) == 1
    code, _, err = await _run("-m", "edge", "serve", "--site", "atlantis")
    assert code == 2 and "no such site" in err and "Traceback" not in err


async def test_device_sim_cli_bad_input(tmp_path):
    code, _, err = await _run("scripts/device_sim.py", "--url", "ws://127.0.0.1:9/xiaozhi/v1/",
                              "--wav", str(tmp_path / "missing.wav"))
    assert code == 1 and err.strip() == f"device_sim: {tmp_path / 'missing.wav'}: no such file"
    wav = tmp_path / "in.wav"
    _write_wav(wav, tone(300, 22050), 22050)
    code, _, err = await _run("scripts/device_sim.py", "--url", "ws://127.0.0.1:9/xiaozhi/v1/", "--wav", str(wav))
    assert code == 1 and err.startswith("device_sim: WebSocket") and "Traceback" not in err


async def test_device_sim_cli_turns_through_ota(edge_server, fake_engine, tmp_path):
    edge = await edge_server(fake_engine)
    wav = tmp_path / "in.wav"
    _write_wav(wav, tone(700, 44100), 44100)  # resampled to 16 kHz by the simulator
    out = tmp_path / "reply.wav"
    code, stdout, err = await _run("scripts/device_sim.py", "--ota", edge.ota_url, "--wav", str(wav),
                                   "--turns", "2", "--protocol-version", "3", "--save-wav", str(out))
    assert code == 0, err
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert line["stt"].startswith("heard") and line["reply"] == "First sentence. Second sentence."
        assert line["answered_by"] == "edge" and line["frames"] == 20 and line["sample_rate"] == 24000
        assert set(line["timings_ms"]) == {"stt", "llm", "first_audio", "tts_stop"}
    for i in (1, 2):
        with wave.open(str(tmp_path / f"reply-{i}.wav"), "rb") as w:
            assert w.getframerate() == 24000 and w.getnframes() == 20 * 1440
