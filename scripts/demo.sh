#!/usr/bin/env bash
# The main job on the local default: no cluster, no cloud account.
# Sets up if needed, starts a local S3 server (SeaweedFS on loopback), and runs, with NP MPI ranks:
#   1. storage sweep on POSIX (O_DIRECT)      2. checkpoint burst, Llama 3 8B layout (scaled), O_DIRECT + fsync
#   3. metadata storm (mdtest-easy-like)      4. KV-cache offload, Llama 3 8B, 100 users, 4 GiB CPU tier (scaled)
#   5. storage sweep on S3                    6. checkpoint burst on S3 (multipart)
# then stops the server and prints each run's results directory (summary.json inside).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
RESULTS=${RESULTS:-results/demo}
NP=${NP:-2}
BIN=.venv/bin
MPIRUN=("$BIN/mpirun" --oversubscribe -np "$NP")
[ -x "$BIN/mpirun" ] || MPIRUN=(mpirun --oversubscribe -np "$NP")
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dlio-ext-demo.XXXXXX")
trap '"$BIN/dlio-ext" s3-server stop --dir "$WORK/s3" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
step() { echo "== $*" >&2; }
run() { "${MPIRUN[@]}" "$BIN/dlio-ext" run run.results_dir="$RESULTS" "$@" | tee -a "$WORK/out"; }

step "1/6 storage sweep, POSIX O_DIRECT, $NP ranks"
run workload=storage_sweep storage=posix storage.direct=true workload.object_size=4194304 workload.objects_per_rank=32
step "2/6 checkpoint burst, Llama 3 8B layout at scale 0.002, O_DIRECT + fsync, 3 writes + 3 cold restores"
run workload=checkpoint_burst/llama3_8b storage=posix storage.direct=true storage.fsync=file \
  workload.checkpoints=3 workload.restores=3 workload.compute_seconds=0.5
step "3/6 metadata, mdtest-easy-like, POSIX"
run workload=metadata/easy storage=posix
step "4/6 KV cache, Llama 3 8B, 100 users/rank, CPU tier (scale 1/256), POSIX"
run workload=kv_cache/llama3_8b_100u_cpu4g storage=posix workload.users=20

step "starting a local S3 server (SeaweedFS on 127.0.0.1)"
eval "$("$BIN/dlio-ext" s3-server start --dir "$WORK/s3")"
step "5/6 storage sweep, S3, $NP ranks, 4 requests in flight per rank"
run workload=storage_sweep storage=s3 workload.io_depth=4 workload.object_size=1048576 workload.objects_per_rank=64
step "6/6 checkpoint burst on S3, Llama 3 8B layout at scale 0.002, 2 writes + 2 restores"
run workload=checkpoint_burst/llama3_8b storage=s3 storage.part_size=8388608 workload.checkpoints=2 \
  workload.restores=2 workload.compute_seconds=0.5

echo
grep '^results: ' "$WORK/out"
