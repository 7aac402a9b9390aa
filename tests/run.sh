#!/usr/bin/env bash
# Sets up the virtualenv (once), lints and runs the whole test suite, from any current directory.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m "not slow"` or `-k model`.
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/launch/venv.sh"
cd "$SMOLLM2_ROOT"
ruff check .            # the settings are in pyproject.toml
ruff format --check .
exec python -m pytest "$@"
