#!/usr/bin/env bash
# Sets up if needed, then runs the whole test suite (real MPI, real SeaweedFS, real DLIO).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
.venv/bin/ruff check dlio_ext tests scripts
exec .venv/bin/python -m pytest -q "$@"
