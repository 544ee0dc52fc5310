"""storage=nixl, storage.medium=obj: objects in one S3 bucket, their bytes moved by NIXL's OBJ plugin.

The medium is the s3 backend (its boto3 client, from the project's one factory) with another data
path: a put is one whole-object PUT through the plugin (a WRITE at offset 0: the plugin takes no
other offset), a get or get_range a ranged GET (a READ at the object offset), each polled to DONE
before the verb returns. What the plugin has no call for goes through boto3 with the s3 backend's
retries, error kinds and liveness: stat (HEAD), list, delete, the health check before the run,
and the HEAD before every read. That HEAD is needed: a READ past the end of
an object reports DONE with no length (only the bytes that exist land), so the size must be known
first; it also makes a missing key NotFound, where the plugin says only NIXL_ERR_BACKEND.

Facts from the probes (/work/wt/notes/nixl.md, "object (OBJ plugin, S3)"):
- a missing bucket is created by SeaweedFS on the first PUT, and an unreachable endpoint fails
  after ~26 s with a bare NIXL_ERR_BACKEND: the s3 backend's check (a HEAD of the bucket with
  short timeouts) runs before any transfer, so a wrong endpoint or bucket is one line, exit 2;
- `get_backend_params("OBJ")` echoes the secret key: nothing of the plugin's parameters is ever
  put in a message or in results;
- `accelerated` (S3 over RDMA) is not compiled into the PyPI wheel.
"""

from __future__ import annotations

import itertools
import os
import threading
from urllib.parse import urlsplit

from dlio_ext.storage.base import Counters, Liveness, StorageError, Unreachable, Writer
from dlio_ext.storage.buffers import address, round_up
from dlio_ext.storage.nixl.agent import Agent
from dlio_ext.storage.nixl.medium import Report, round_trip
from dlio_ext.storage.nixl.settings import NixlSettings
from dlio_ext.storage.s3 import S3Backend, S3Settings
from dlio_ext.storage.s3.driver import as_view, too_big
from dlio_ext.storage.s3.errors import probe_endpoint, unreachable
from dlio_ext.storage.s3.settings import Secret
from dlio_ext.world import SoloWorld

#: the s3 backend's checksum setting -> the plugin's req_checksum / resp_checksum
CHECKSUM = {"when_required": "required", "when_supported": "supported"}
#: staging bytes a streamed object starts with (doubled as it grows)
STAGE = 8 << 20


def s3_settings(s: NixlSettings) -> S3Settings:
    """The store the obj keys name, as the s3 backend's settings (boto3, its defaults otherwise):
    its client, retries and error words then serve the verbs NIXL has no call for."""
    assert s.bucket, "NixlSettings.check requires a bucket for medium=obj"
    return S3Settings(
        bucket=s.bucket,
        client="boto3",
        endpoint=s.endpoint.rstrip("/") if s.endpoint else None,
        prefix=s.prefix.strip("/"),
        region=s.region,
        access_key=Secret(s.access_key) if s.access_key else None,
        secret_key=Secret(s.secret_key) if s.secret_key else None,
        checksum=s.checksum,
    )


def plugin_params(s: S3Settings) -> dict[str, str]:
    """The OBJ plugin's parameters for the store `s` names. They hold the secret key: handed to
    NIXL and nowhere else."""
    params = {
        "bucket": s.bucket,
        "region": s.region,
        "use_virtual_addressing": "false" if s.path_style else "true",
        "req_checksum": CHECKSUM[s.checksum],
        "resp_checksum": CHECKSUM[s.checksum],
    }
    if s.endpoint:
        params["endpoint_override"] = s.endpoint
        params["scheme"] = urlsplit(s.endpoint).scheme
    if s.access_key and s.secret_key:
        params["access_key"] = s.access_key.reveal()
        params["secret_key"] = s.secret_key.reveal()
    if s.ca_bundle:
        params["ca_bundle"] = s.ca_bundle
    return params


class ObjMedium(S3Backend):
    """S3Backend (boto3) whose put, get, get_range and writer move bytes through NIXL's OBJ plugin."""

    def __init__(self, agent: Agent, settings: S3Settings):
        super().__init__(settings)
        self.agent = agent
        self._base = f"{settings.prefix}/" if settings.prefix else ""
        self._ids = itertools.count(1)  # a registration's devId: the handle its descriptors name
        self._stages = threading.local()
        self._free: list[memoryview] = []  # registered staging buffers writers hand back
        self._lock = threading.Lock()

    # the data path -------------------------------------------------------------------------
    def _stage(self, nbytes: int) -> memoryview:
        """This thread's registered staging buffer, at least `nbytes` (grown, never shrunk)."""
        buf = getattr(self._stages, "buf", None)
        if buf is None or len(buf) < nbytes:
            buf = self.agent.alloc(round_up(max(nbytes, STAGE)))
            self._stages.buf = buf
        return buf

    def _takes(self, view: memoryview) -> bool:
        return self.agent.registered(address(view), len(view))

    def _move(self, op: str, key: str, view: memoryview, offset: int) -> None:
        """One transfer between `view` (registered) and the object at `offset`, to DONE."""
        dev = next(self._ids)
        verb = "put" if op == "WRITE" else "get"
        ag = self.agent.agent
        try:
            reg = ag.register_memory([(0, 0, dev, self._base + key)], "OBJ")
        except Exception as exc:
            raise self._failed(verb, key, f"registering the key failed ({type(exc).__name__})") from None
        try:
            n = len(view)
            self.agent.move(
                op, [(address(view), n)], self.agent.name, [(offset, n, dev)], "OBJ", f"{verb} {key!r}"
            )
        except StorageError as exc:
            raise self._failed(verb, key, str(exc).rpartition(": ")[2]) from None
        finally:
            ag.deregister_memory(reg)

    def _failed(self, verb: str, key: str, why: str) -> StorageError:
        """The plugin's failure, classified by what we can find out ourselves (it gives no HTTP
        status): a server that does not accept connections is Unreachable. Counted."""
        s = self.settings
        transport = probe_endpoint(s)
        err: StorageError
        if transport is not None:
            err = Unreachable(f"{verb} {key!r}: {unreachable(s, transport)}", key)
        else:
            err = StorageError(
                f"{verb} {key!r}: NIXL's OBJ plugin failed ({why}; it gives no HTTP status)", key
            )
        self.counters.error(err.kind)
        return err

    def _read(self, key: str, into: memoryview, offset: int) -> None:
        n = len(into)
        if self._takes(into):
            self._move("READ", key, into, offset)
            return
        stage = self._stage(n)
        self._move("READ", key, stage[:n], offset)
        into[:] = stage[:n]

    def put(self, key: str, data: memoryview | bytes) -> None:
        view = as_view(data)
        n = len(view)
        if not n:
            super().put(key, view)  # NIXL moves no empty transfer: an empty object is boto3's PUT
            return
        if not self._takes(view):
            stage = self._stage(n)
            stage[:n] = view
            view = stage[:n]
        self._move("WRITE", key, view, 0)

    def get(self, key: str, into: memoryview) -> int:
        view = as_view(into)
        size = self.stat(key).size  # a READ past the end says DONE: the size comes first
        if size > len(view):
            err = too_big(key, size, view)
            self.counters.error(err.kind)
            raise err
        if size:
            self._read(key, view[:size], 0)
        return size

    def get_range(self, key: str, offset: int, into: memoryview) -> int:
        view = as_view(into)
        if not len(view):
            return 0
        want = max(0, min(len(view), self.stat(key).size - offset))
        if want:
            self._read(key, view[:want], offset)
        return want

    def writer(self, key: str) -> Writer:
        return _ObjWriter(self, key)

    def _take_stage(self, nbytes: int) -> memoryview:
        """A registered buffer of at least `nbytes` for a writer, from those handed back if one fits."""
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= nbytes:
                    return self._free.pop(i)
        return self.agent.alloc(round_up(max(nbytes, STAGE)))

    def _give_stage(self, buf: memoryview) -> None:
        with self._lock:
            self._free.append(buf)

    # lifecycle -----------------------------------------------------------------------------
    def check(self) -> None:
        """The s3 backend's check (the bucket answers a HEAD, fast: a wrong endpoint, bucket or
        key is one line before any transfer), then one PUT and GET through the plugin."""
        super().check()
        round_trip(self, f".dlio_ext_nixl_probe.{os.getpid()}", "NIXL's OBJ plugin")

    # the Medium protocol beyond the s3 verbs -----------------------------------------------
    def alloc(self, nbytes: int) -> memoryview:
        return self.agent.alloc(nbytes)

    def share(self, counters: Counters, liveness: Liveness) -> None:
        # the s3 retry loop counts in (and watches) what its backend held when it was built
        self.counters = self._calls.counters = self.agent.counters = counters
        self.liveness = liveness

    def notes(self) -> dict[str, object]:
        return {
            "data_path": "NIXL OBJ plugin: put = one whole-object PUT (a WRITE at offset 0), "
            "get and get_range = a ranged GET (a READ at the offset) after a HEAD for the size",
            "boto3_verbs": "stat, list, delete, the check before the run, the HEAD before each "
            "read, and empty objects go through boto3 (NIXL has no such verbs)",
            "writer": "a streamed object is staged whole in registered memory, one PUT at close",
            "accelerated": "unavailable: S3 over RDMA is not compiled into the PyPI wheel",
        }

    def report(self) -> Report:
        return {
            "plugins": {op.lower(): sorted(p) for op, p in self.agent.plugins.items()},
            "transports": {},  # no UCX: the OBJ plugin speaks HTTP from this process
            "registration_seconds": self.agent.registration_seconds,
            "registrations": self.agent.registrations,
        }

    def close(self) -> None:
        super().close()
        self.agent.close()


def open(settings: NixlSettings, run_dir: str | None, world: SoloWorld) -> ObjMedium:  # noqa: A001
    """The obj medium: one OBJ agent a rank, on the store the obj keys name."""
    s3 = s3_settings(settings)
    return ObjMedium(Agent(f"obj-rank{world.rank}-{os.getpid()}", {"OBJ": plugin_params(s3)}), s3)


class _ObjWriter(Writer):
    """A streamed object: the plugin writes whole objects only, so the chunks gather in a
    registered buffer of the medium's (grown by doubling) and go up as one PUT at close."""

    def __init__(self, medium: ObjMedium, key: str):
        self.m, self.key = medium, key
        self.buf: memoryview | None = medium._take_stage(STAGE)
        self.size = 0

    def write(self, chunk: memoryview | bytes) -> None:
        assert self.buf is not None, "write after close or abort"
        view = as_view(chunk)
        end = self.size + len(view)
        if end > len(self.buf):
            bigger = self.m._take_stage(max(end, 2 * len(self.buf)))
            bigger[: self.size] = self.buf[: self.size]
            self.m._give_stage(self.buf)
            self.buf = bigger
        self.buf[self.size : end] = view
        self.size = end

    def close(self) -> None:
        buf, self.buf = self.buf, None
        if buf is None:
            return
        try:
            self.m.put(self.key, buf[: self.size])
        finally:
            self.m._give_stage(buf)

    def abort(self) -> None:
        # nothing reached the store: a PUT happens only at close
        if self.buf is not None:
            self.m._give_stage(self.buf)
            self.buf = None
