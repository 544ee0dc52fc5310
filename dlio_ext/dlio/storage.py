"""DLIO's DataStorage over a dlio-ext backend, and the one backend each process opens.

DLIO 2.0.0's S3Storage delegates to TensorFlow's s3:// file system, which TensorFlow removed
(2.6+), so storage_type=s3 cannot work there at all; `ObjectStorage` answers DLIO's namespace
and metadata calls (walk_node, get_node, ...) with LIST/HEAD/DELETE on our S3 backend.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import threading

from dlio_benchmark.common.enumerations import MetadataType, NamespaceType
from dlio_benchmark.storage.storage_handler import DataStorage, Namespace

from dlio_ext.dlio.options import AdapterSpec
from dlio_ext.errors import UsageError
from dlio_ext.storage import Backend, NotFound, open_backend

_lock = threading.Lock()
_backend: tuple[int, Backend] | None = None


def backend_for(spec: AdapterSpec) -> Backend:
    """This process's backend, opened on first use.

    Keyed by pid: a torch DataLoader worker forked from a rank must not reuse the parent's
    client (obstore's runtime threads do not survive fork), so it opens its own."""
    global _backend
    pid = os.getpid()
    with _lock:
        if _backend is None or _backend[0] != pid:
            _backend = (pid, open_backend(spec.backend_cfg))
        return _backend[1]


def _norm(node_id: str) -> str:
    key = posixpath.normpath(str(node_id)).lstrip("/")
    return "" if key == "." else key


class ObjectStorage(DataStorage):
    """A flat namespace: a "directory" exists while some key lies under it."""

    def __init__(self, spec: AdapterSpec, namespace: str):
        # framework=None: DLIO would otherwise route metadata calls to the framework's native I/O
        super().__init__(framework=None)
        self.spec = spec
        self.namespace = Namespace(namespace, NamespaceType.FLAT)

    @property
    def backend(self) -> Backend:
        return backend_for(self.spec)

    def get_uri(self, id: str) -> str:  # noqa: A002 - DLIO's signature
        return self.spec.uri(_norm(id))

    def _key(self, id: str) -> str:  # noqa: A002
        # DLIO passes ids relative to the namespace (data_folder/...), never URIs
        return _norm(id)

    def create_namespace(self, exist_ok: bool = False) -> bool:
        # the bucket is the namespace; it must exist already (creating buckets is not the benchmark's job)
        self.backend.check()
        return True

    def get_namespace(self) -> str:
        return self.namespace.name

    def create_node(self, id: str, exist_ok: bool = False) -> bool:  # noqa: A002
        return True  # no directories in a bucket: a prefix appears with its first object

    def get_node(self, id: str = "") -> MetadataType | None:  # noqa: A002
        key = self._key(id)
        if not key:
            return MetadataType.DIRECTORY
        for _ in self.backend.list(key + "/"):
            return MetadataType.DIRECTORY
        try:
            self.backend.stat(key)
        except NotFound:
            return None
        return MetadataType.FILE

    def walk_node(self, id: str, use_pattern: bool = False) -> list[str]:  # noqa: A002
        if not use_pattern:
            # like os.listdir: the names of the entries directly under the node
            prefix = self._key(id)
            prefix = prefix + "/" if prefix else ""
            names = []
            for entry in self.backend.list(prefix, delimiter="/"):
                name = entry[len(prefix) :].rstrip("/")
                if name:
                    names.append(name)
            return names
        # like glob.glob: full URIs matching a pattern such as data/train/*/*.npz; DLIO also
        # accepts the upper-case extension
        pattern = self._key(id)
        parts = pattern.split("/")
        fixed = []
        for part in parts:
            if any(c in part for c in "*?["):
                break
            fixed.append(part)
        prefix = "/".join(fixed) + "/" if fixed else ""
        stem, dot, ext = pattern.rpartition(".")
        patterns = [parts] + ([f"{stem}.{ext.upper()}".split("/")] if dot and ext != ext.upper() else [])
        out = []
        for key in self.backend.list(prefix):
            segs = key.split("/")
            if any(len(segs) == len(p) and all(map(fnmatch.fnmatchcase, segs, p)) for p in patterns):
                out.append(self.spec.uri(key))
        return out

    def delete_node(self, id: str) -> bool:  # noqa: A002
        key = self._key(id)
        if not key:
            raise UsageError("refusing to delete the whole bucket root; set dataset.data_folder")
        self.backend.delete_many(list(self.backend.list(key + "/")))
        return True

    def put_data(self, id: str, data, offset=None, length=None) -> None:  # noqa: A002
        self.backend.put(self._key(id), data if isinstance(data, (bytes, memoryview)) else str(data).encode())

    def get_data(self, id: str, data=None, offset=None, length=None) -> bytes:  # noqa: A002
        key = self._key(id)
        size = self.backend.stat(key).size
        buf = bytearray(size)
        self.backend.get(key, memoryview(buf))
        return bytes(buf)

    def get_basename(self, id: str) -> str:  # noqa: A002
        return os.path.basename(id)
