#!/usr/bin/env bash
# The main job on the embedded default: set up, then evaluate the shipped model organism on its held-out sets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=runs/main/organism-eval
.venv/bin/quantfid-organism eval --out "$out"
echo "per-prompt outcomes: $out/outcomes.parquet   summary: $out/eval.json"
