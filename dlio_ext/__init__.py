"""dlio-ext: storage benchmarking for AI clusters beyond throughput."""

import os

__version__ = "0.1.0"

# awscrt is installed for s3-compat's CRC32C/CRC64NVME probes (which call it themselves). Once it
# is importable, botocore signs every request with CRT's SigV4 and computes CRC32 with CRT, and
# s3transfer may pick the CRT transfer client: the boto3 driver and the benchmarks' baselines
# would measure other code than without it. botocore reads this switch once, when first imported,
# so it is set here, before any dlio-ext module imports boto3; BOTO_DISABLE_CRT=false opts in.
os.environ.setdefault("BOTO_DISABLE_CRT", "true")
