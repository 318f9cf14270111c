#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs): ruff on every Python file, the import layering
# (lint-imports, contracts in pyproject.toml), then pytest (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
