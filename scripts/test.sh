#!/usr/bin/env bash
# Set up .venv if needed, install the project with its test extras, lint, type-check, run
# the suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k letters
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
ensure_venv test
echo "== ruff"
.venv/bin/ruff check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
