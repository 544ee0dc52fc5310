#!/usr/bin/env bash
# The main job on the local default: no cluster, no cloud account.
# Sets up if needed, starts a local S3 server (SeaweedFS on loopback), runs the storage sweep on
# POSIX (O_DIRECT, 2 MPI ranks) and on S3 (2 ranks), stops the server, prints the results dirs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
RESULTS=${RESULTS:-results/demo}
NP=${NP:-2}
BIN=.venv/bin
MPIRUN=("$BIN/mpirun" --oversubscribe -np "$NP")
command -v "$BIN/mpirun" >/dev/null || MPIRUN=(mpirun --oversubscribe -np "$NP")
SERVER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/dlio-ext-demo-s3.XXXXXX")
trap '"$BIN/dlio-ext" s3-server stop --dir "$SERVER_DIR" >/dev/null 2>&1 || true; rm -rf "$SERVER_DIR"' EXIT

echo "== 1/2 storage sweep on POSIX, O_DIRECT, $NP ranks" >&2
"${MPIRUN[@]}" "$BIN/dlio-ext" run workload=storage_sweep storage=posix storage.direct=true \
  workload.object_size=4194304 workload.objects_per_rank=32 run.results_dir="$RESULTS" | tee "$SERVER_DIR/posix.out"

echo "== 2/2 storage sweep on S3 (local SeaweedFS), $NP ranks" >&2
eval "$("$BIN/dlio-ext" s3-server start --dir "$SERVER_DIR")"
"${MPIRUN[@]}" "$BIN/dlio-ext" run workload=storage_sweep storage=s3 workload.io_depth=4 \
  workload.object_size=1048576 workload.objects_per_rank=64 run.results_dir="$RESULTS" | tee "$SERVER_DIR/s3.out"

grep -h '^results: ' "$SERVER_DIR/posix.out" "$SERVER_DIR/s3.out"
