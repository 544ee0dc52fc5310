"""DLIO 2.0.0's training loop, checkpointing through dlio-ext's checkpoint-burst engine.

    dlio-ext dlio workload=<...> ++workload.workflow.checkpoint=True \\
        ++workload.checkpoint.checkpoint_mechanism_classname=dlio_ext.dlio.checkpointing.BurstCheckpointing

DLIO decides when to checkpoint and which files each rank writes (its names, its sizes: for
every int8 tensor DLIO 2.0.0 would build, that many bytes); the engine writes them the way the
checkpoint_burst workload does, fixing what DLIO's own PyTorchCheckpointing gets wrong:
- no tensors in memory: DLIO allocates whole shards in RAM (torch.randint) at start-up and
  pickles them with torch.save; here a file streams from a fixed pool of aligned buffers;
- durability: every file is fsynced (DLIO never calls fsync), O_DIRECT on request;
- time: every rank is timed from a common barrier; `dlio_ext_checkpoint.json` in DLIO's output
  folder has each checkpoint's burst (first start to last end over all ranks), GB/s, per-rank
  p50/max, straggler ratio and fsync calls and time (DLIO's own figure is rank 0's time only).

Where the files go: with dlio-ext's posix adapter active (workload.storage.storage_options),
through its backend; otherwise a posix backend rooted at checkpoint.checkpoint_folder.
Environment (the hook takes no arguments): DLIO_EXT_CHECKPOINT_FSYNC=none|file|file_and_dir
(default file), DLIO_EXT_CHECKPOINT_DIRECT=1 for O_DIRECT, DLIO_EXT_CHECKPOINT_CHUNK (bytes per
call, default 16 MiB), DLIO_EXT_CHECKPOINT_POOL (buffer pool bytes, default 64 MiB).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

from dlio_benchmark.checkpointing.base_checkpointing import BaseCheckpointing
from dlio_benchmark.utils.utility import DLIOMPI

from dlio_ext.errors import UsageError
from dlio_ext.storage import Backend, open_backend
from dlio_ext.workloads.checkpoint_burst import Content, Engine, FileEvent, PlannedFile

REPORT = "dlio_ext_checkpoint.json"
MIB = 1 << 20


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise UsageError(f"{name}={raw!r} must be a number of bytes") from None
    if value <= 0 or value % 4096:
        raise UsageError(f"{name}={value} must be a positive multiple of 4096")
    return value


def _nbytes(state: Any) -> int:
    """Bytes of a DLIO state dict whose tensors are sizes (see get_tensor)."""
    if isinstance(state, dict):
        return sum(_nbytes(v) for v in state.values())
    return int(state) if isinstance(state, int) else 0


class BurstCheckpointing(BaseCheckpointing):
    __instance: BurstCheckpointing | None = None

    @staticmethod
    def get_instance() -> BurstCheckpointing:
        if BurstCheckpointing.__instance is None:
            BurstCheckpointing.__instance = BurstCheckpointing()
        return BurstCheckpointing.__instance

    def __init__(self) -> None:
        super().__init__("pt")  # sizes DLIO's state through get_tensor: sizes only, nothing allocated
        self.mpi = DLIOMPI.get_instance()
        self.rank = self.mpi.rank()
        self.backend, self.root, self.via = self._open_backend()
        chunk = _env_int("DLIO_EXT_CHECKPOINT_CHUNK", 16 * MIB)
        pool = max(chunk, _env_int("DLIO_EXT_CHECKPOINT_POOL", 64 * MIB))
        self.engine = Engine(
            self.backend,
            Content(int(getattr(self.args, "seed", 123) or 123), chunk, pool, 1, alloc=self.backend.alloc),
        )
        self.ckpt = 0
        self._current: list[FileEvent] = []
        self.files: list[FileEvent] = []
        self.bursts: list[dict[str, Any]] = []

    def _open_backend(self) -> tuple[Backend, str, str]:
        spec = getattr(self.args, "dlio_ext_spec", None)
        if spec is not None:
            # the adapter's backend for this run (posix with its storage_options)
            from dlio_ext.dlio.storage import backend_for

            return backend_for(spec), spec.uri_root, f"dlio-ext {spec.kind} adapter"
        fsync = os.environ.get("DLIO_EXT_CHECKPOINT_FSYNC", "file")
        if fsync not in ("none", "file", "file_and_dir"):
            raise UsageError(f"DLIO_EXT_CHECKPOINT_FSYNC={fsync!r}: use none, file or file_and_dir")
        direct = os.environ.get("DLIO_EXT_CHECKPOINT_DIRECT", "0") not in ("", "0", "false", "False")
        root = os.path.abspath(self.args.checkpoint_folder)
        cfg = {"type": "posix", "root": root, "fsync": fsync, "direct": direct}
        return open_backend(cfg), root, "posix"

    # DLIO's hooks ---------------------------------------------------------------------------------
    def get_tensor(self, size):  # noqa: ANN001 - DLIO's signature
        return int(size)  # an int8 tensor of `size` elements is `size` bytes; none is allocated

    def save_state(self, suffix, state) -> None:  # noqa: ANN001
        path = os.path.abspath(self.get_name(suffix))
        spec = getattr(self.args, "dlio_ext_spec", None)
        if spec is not None:
            # the adapter keeps checkpoints under the storage root (bucket or storage_root)
            key = spec.root_key(self.get_name(suffix))
        else:
            key = os.path.relpath(path, self.root)
            if key.startswith(".."):
                raise UsageError(f"checkpoint file {path} lies outside the backend root {self.root}")
        f = PlannedFile(key, os.path.basename(path), _nbytes(state), len(self._current), self.rank, "dlio")
        ev = self.engine.write_file(f, self.ckpt)
        self._current.append(ev)
        if not ev.ok:
            raise RuntimeError(f"checkpoint write failed: {ev.error}")

    def checkpoint(self, epoch, step_number) -> None:  # noqa: ANN001
        self._current = []
        calls0, secs0 = self.backend.fsync_counters()
        self.mpi.comm().barrier()  # every rank starts the burst together
        t0 = time.perf_counter()
        super().checkpoint(epoch, step_number)
        t1 = time.perf_counter()
        calls1, secs1 = self.backend.fsync_counters()
        self.files.extend(self._current)
        self.bursts.append(
            {
                "epoch": epoch,
                "step": step_number,
                "start": (self._current[0].start - t0) if self._current else 0.0,
                "end": (t1 - t0) if self._current else 0.0,
                "files": len(self._current),
                "bytes": sum(e.nbytes for e in self._current),
                "fsync_calls": calls1 - calls0,
                "fsync_s": secs1 - secs0,
            }
        )
        self.ckpt += 1

    def finalize(self) -> None:
        gathered = self.mpi.comm().gather(self.bursts, root=0)
        if self.rank == 0 and gathered is not None:
            self._report(gathered)
        self.backend.close()

    # --------------------------------------------------------------------------------------------------
    def _report(self, gathered: list[list[dict[str, Any]]]) -> None:
        out = []
        for i in range(len(gathered[0]) if gathered else 0):
            rows = [g[i] for g in gathered if i < len(g)]
            active = [r for r in rows if r["files"]]
            span = max((r["end"] for r in active), default=0.0) - min(
                (r["start"] for r in active), default=0.0
            )
            secs = sorted(r["end"] - r["start"] for r in active)
            med = statistics.median(secs) if secs else 0.0
            nbytes = sum(r["bytes"] for r in rows)
            out.append(
                {
                    "epoch": rows[0]["epoch"],
                    "step": rows[0]["step"],
                    "ranks_writing": len(active),
                    "files": sum(r["files"] for r in rows),
                    "bytes": nbytes,
                    "burst_seconds": round(span, 6),
                    "GBps": round(nbytes / span / 1e9, 6) if span > 0 else 0.0,
                    "rank_seconds": {"p50": round(med, 6), "max": round(secs[-1], 6) if secs else 0.0},
                    "straggler_ratio": round(secs[-1] / med, 4) if med else 0.0,
                    "fsync_calls": sum(r["fsync_calls"] for r in rows),
                    "fsync_s": round(sum(r["fsync_s"] for r in rows), 6),
                }
            )
        doc = {
            "mechanism": "dlio_ext.dlio.checkpointing.BurstCheckpointing",
            "storage": self.backend.describe(),
            "via": self.via,
            "checkpoint_type": str(getattr(self.args, "checkpoint_type", "")),
            "checkpoints": out,
            "note": "files and sizes are DLIO 2.0.0's (bytes of its int8 tensors, without torch.save's "
            "framing); written from a reusable buffer pool, fsynced per the backend's policy",
        }
        folder = self.args.output_folder or "."
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, REPORT + ".partial")
        with open(tmp, "w") as fh:
            json.dump(doc, fh, indent=2)
        os.replace(tmp, os.path.join(folder, REPORT))
