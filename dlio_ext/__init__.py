"""dlio-ext: storage benchmarking for AI clusters beyond throughput."""

__version__ = "0.1.0"
