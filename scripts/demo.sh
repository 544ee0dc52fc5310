#!/usr/bin/env bash
# The main job on the local default: no cluster, no cloud account.
# Sets up if needed, starts a local S3 server (SeaweedFS on loopback), and runs, with NP MPI ranks:
#   1. storage sweep on POSIX (O_DIRECT)      2. checkpoint burst, Llama 3 8B layout (scaled), O_DIRECT + fsync
#   3. the same burst through a tier-0 (NIXL memory over the ranks) drained to POSIX
#   4. metadata storm (mdtest-easy-like)      5. KV-cache offload, Llama 3 8B, 100 users, 4 GiB CPU tier (scaled)
#   6. storage sweep on S3                    7. checkpoint burst on S3 (multipart)
# then stops the server, renders each run's report (report.html), compares the two checkpoint runs
# (POSIX and S3), and prints where the results and pages are.
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
last() { grep '^results: ' "$WORK/out" | tail -1 | cut -d' ' -f2-; }

step "1/7 storage sweep, POSIX O_DIRECT, $NP ranks"
run workload=storage_sweep storage=posix storage.direct=true workload.object_size=4194304 workload.objects_per_rank=32
step "2/7 checkpoint burst, Llama 3 8B layout at scale 0.002, O_DIRECT + fsync, 3 writes + 3 cold restores"
run workload=checkpoint_burst/llama3_8b storage=posix storage.direct=true storage.fsync=file \
  workload.checkpoints=3 workload.restores=3 workload.compute_seconds=0.5
CKPT_POSIX=$(last)
step "3/7 the same burst through a tier-0 (NIXL memory over the ranks), drained to POSIX O_DIRECT + fsync"
run workload=checkpoint_burst/llama3_8b storage=posix storage.direct=true storage.fsync=file tier0=nixl \
  workload.checkpoints=3 workload.restores=3 workload.compute_seconds=0.5
step "4/7 metadata, mdtest-easy-like, POSIX"
run workload=metadata/easy storage=posix
step "5/7 KV cache, Llama 3 8B, 100 users/rank, CPU tier (scale 1/256), POSIX"
run workload=kv_cache/llama3_8b_100u_cpu4g storage=posix workload.users=20

step "starting a local S3 server (SeaweedFS on 127.0.0.1)"
eval "$("$BIN/dlio-ext" s3-server start --dir "$WORK/s3")"
step "6/7 storage sweep, S3, $NP ranks, 4 requests in flight per rank"
run workload=storage_sweep storage=s3 workload.io_depth=4 workload.object_size=1048576 workload.objects_per_rank=64
step "7/7 checkpoint burst on S3, Llama 3 8B layout at scale 0.002, 3 writes + 3 restores"
run workload=checkpoint_burst/llama3_8b storage=s3 storage.part_size=8388608 \
  workload.checkpoints=3 workload.restores=3 workload.compute_seconds=0.5
CKPT_S3=$(last)
"$BIN/dlio-ext" s3-server stop --dir "$WORK/s3" >/dev/null

step "reports: one self-contained page per run"
grep '^results: ' "$WORK/out" | cut -d' ' -f2- | while read -r dir; do
  "$BIN/dlio-ext" report "$dir" --out "$dir/report.html" >/dev/null
done
step "compare: the checkpoint burst on POSIX (baseline) and on S3"
"$BIN/dlio-ext" compare "$CKPT_POSIX" "$CKPT_S3" --html "$RESULTS/compare-checkpoint.html" \
  --json "$RESULTS/compare-checkpoint.json" | tee "$WORK/compare"

echo
grep '^results: ' "$WORK/out" | sed 's|$|/report.html|; s|^results: |report: |'
echo "compare: $RESULTS/compare-checkpoint.html"
