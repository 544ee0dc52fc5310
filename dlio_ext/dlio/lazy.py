"""Keep DLIO from importing TensorFlow for runs that never use it.

dlio_benchmark.main imports its profiler factory, which imports the TensorBoard profiler module,
which imports TensorFlow at its top: about 4 s of CPU per rank (and thousands of files read from
a shared file system at cluster scale) for pytorch runs that never touch it. That one module is
replaced by a stand-in whose TFProfiler loads the real module on first use, so
`profiling.profiler=tensorboard` still works. (A lazy `tensorflow` module does not help: on
Python 3.11 the import statement itself touches the module's __spec__, which loads it.)
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping
from typing import Any

TF_PROFILER = "dlio_benchmark.profiler.tf_profiler"


class _DeferredTFProfiler:
    @staticmethod
    def get_instance() -> Any:
        sys.modules.pop(TF_PROFILER, None)
        return importlib.import_module(TF_PROFILER).TFProfiler.get_instance()


def defer_tf_profiler() -> bool:
    """Install the stand-in unless the real module is loaded already; True if installed."""
    if TF_PROFILER in sys.modules:
        return False
    stub = types.ModuleType(
        TF_PROFILER, "stand-in until the TensorBoard profiler is used (dlio_ext.dlio.lazy)"
    )
    stub.TFProfiler = _DeferredTFProfiler  # type: ignore[attr-defined]
    sys.modules[TF_PROFILER] = stub
    return True


def needs_tensorflow(workload: Mapping[str, Any]) -> bool:
    """Whether this DLIO workload uses TensorFlow at all (then it is imported the normal way)."""
    reader = workload.get("reader") or workload.get("data_reader") or {}
    profiling = workload.get("profiling") or {}
    return (
        str(workload.get("framework", "tensorflow")) == "tensorflow"
        or str(reader.get("data_loader", "tensorflow")) == "tensorflow"
        or str(profiling.get("profiler", "")) == "tensorboard"
    )
