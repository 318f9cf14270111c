#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs): ruff, then pytest (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests mlflow_plugins
.venv/bin/python -m pytest -q "$@"
