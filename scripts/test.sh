#!/usr/bin/env bash
# Set up and run the whole test suite (what CI runs): ruff on every Python file, the import layering
# (lint-imports, contracts in pyproject.toml), then pytest (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
QUANTFID_SYSTEM_DEPS=1 bash scripts/setup.sh   # the tests also need PostgreSQL (team mode) and Chromium (UI check)
.venv/bin/ruff check .
.venv/bin/lint-imports
.venv/bin/python -m pytest -q "$@"
