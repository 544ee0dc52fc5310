"""DLIO adapter: dlio_benchmark 2.0.0's training workloads on dlio-ext's storage backends.

    dlio-ext dlio [the arguments dlio_benchmark takes]

runs DLIO's own Hydra main (same configs, same `workload=...` and `++workload...` overrides,
`--config-dir` for custom workloads). This package is the only place that imports
dlio_benchmark.

dlio-ext keys, all under `workload.storage` (add them with `++`; DLIO's YAMLs do not declare
the `storage_options` group and DLIO's LoadConfig ignores it):

  storage_type=s3        DLIO's data, and its checkpoints, go through dlio-ext's S3 backend.
    storage_root=<bucket>[/<prefix>]   required (or DLIO_EXT_S3_BUCKET); the bucket must exist.
    storage_options.<key>  any of: client (obstore|boto3), endpoint (alias endpoint_url),
                           region, path_style, verify, ca_bundle, part_size, concurrency,
                           checksum, retries, backoff_base, backoff_max, connect_timeout,
                           read_timeout (meanings: workload_configs/storage/s3.yaml).
    Endpoint and credentials default to AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_REGION; credentials are refused on the command line.
  storage_type=local_fs with any storage_options: dlio-ext's posix backend.
    storage_options.direct=True        O_DIRECT reads and writes (aligned, reused buffers)
    storage_options.fsync=none|file|file_and_dir
    storage_options.chunk_size=<bytes> per write/read call for streamed files
  storage_type=local_fs without storage_options: DLIO exactly as shipped.

Only the npz format is supported on dlio-ext backends (pytorch or tensorflow data loader). On
s3 with obstore, torch DataLoader workers are spawned, not forked (obstore is not fork-safe).
Outputs (dlio.log, summary.json, per_epoch_stats.json, <rank>_output.json and our
dlio_ext.json with the bytes and calls that went through the backend) go to
workload.output.folder, else hydra.run.dir; hydra.run.dir (.hydra/) defaults to
workload.output.folder, else results/dlio-<model>-<UTC time>-<id> chosen on rank 0.
Bad input: one line, exit status 2. See docs/dlio.md.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    """Entry point for `dlio-ext dlio ...`; returns the process exit status."""
    from dlio_ext.dlio.runner import run

    return run(list(argv))


__all__ = ["main"]
