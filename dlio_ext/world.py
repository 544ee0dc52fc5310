"""The set of ranks a run spans: MPI under mpirun/srun, a world of one without it.

Only what the harness needs: rank, size, barrier, gather/bcast of small Python objects, abort.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

_LAUNCHER_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_STEP_NUM_TASKS", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    return any(v in os.environ for v in _LAUNCHER_VARS)


def env_rank() -> int:
    """This process's rank as the launcher tells it, before (or without) MPI init."""
    for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            # not a number (a launcher's odd value): the next launcher's variable may say it
            with contextlib.suppress(ValueError):
                return int(os.environ[var])
    return 0


class SoloWorld:
    rank = 0
    size = 1
    hostname = os.uname().nodename
    _hosts: list[str] | None = None

    def hosts(self) -> list[str]:
        """Every rank's host name, by rank. Collective the first time (every rank calls it at the
        same point), then remembered."""
        if self._hosts is None:
            self._hosts = self.allgather(self.hostname)
        return self._hosts

    def host_leader(self) -> bool:
        """Whether this rank is the lowest on its host (the one that samples host-wide counters)."""
        hosts = self.hosts()
        return self.rank == hosts.index(self.hostname)

    def ranks_on_host(self) -> int:
        return self.hosts().count(self.hostname)

    def barrier(self) -> None:
        return None

    def gather(self, obj: Any) -> list[Any] | None:
        return [obj]

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def bcast(self, obj: Any) -> Any:
        return obj

    def allreduce_max(self, value: float) -> float:
        return value

    def abort(self, code: int) -> None:
        sys.exit(code)


class MPIWorld(SoloWorld):
    def __init__(self) -> None:
        from mpi4py import MPI

        self._mpi = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()

    def barrier(self) -> None:
        self.comm.Barrier()

    def gather(self, obj: Any) -> list[Any] | None:
        return self.comm.gather(obj, root=0)

    def allgather(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)

    def bcast(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def allreduce_max(self, value: float) -> float:
        return self.comm.allreduce(value, op=self._mpi.MAX)

    def abort(self, code: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


_world: SoloWorld | None = None


def get_world() -> SoloWorld:
    global _world
    if _world is None:
        _world = MPIWorld() if launched_by_mpi() else SoloWorld()
    return _world
