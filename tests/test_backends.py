"""The table of backends: each is found by name, its settings declared once.

For every registered backend the documented YAML, the Hydra schema and the settings dataclass
name the same keys with the same defaults; a backend dropped in as one new file (here a
temporary module on the package's path) is found by its name with no other edit, its settings
validated with one-line errors, and runs a real workload through the real CLI.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import PY, ROOT, Done
from omegaconf import OmegaConf

import dlio_ext.storage as storage_pkg
from dlio_ext.errors import UsageError
from dlio_ext.metrics import results as res
from dlio_ext.storage import backend_class, open_backend, storage_schema
from dlio_ext.storage.base import known

# a backend that keeps its objects in memory: a new medium written as one file, nothing else
MEMTEST = '''
"""An in-memory store: one process, one dict (a test's new backend)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

from dlio_ext.storage.base import Backend, NotFound, ObjectInfo, StorageError, Writer, register
from dlio_ext.storage.settings import Settings, setting


@dataclass(frozen=True)
class MemSettings(Settings):
    capacity: int = setting(1 << 30, low=1)
    mode: str = setting("plain", choices=("plain", "strict"))
    token: str | None = setting(None, env="DLIO_EXT_MEMTEST_TOKEN", secret=True)
    ratio: float = setting(0.5, low=0, high=1)

    def check(self):
        if self.mode == "strict" and self.ratio > 0.9:
            return f"ratio={self.ratio} is too high for mode=strict; use at most 0.9"
        return None


@register
class MemBackend(Backend):
    name = "memtest"
    Settings = MemSettings

    def __init__(self, settings: MemSettings):
        super().__init__()
        self.settings = settings
        self.data: dict[str, bytes] = {}
        self.lock = threading.Lock()

    def _blob(self, key: str) -> bytes:
        with self.lock:
            blob = self.data.get(key)
        if blob is None:
            raise NotFound(f"no such object: {key}", key)
        return blob

    def put(self, key, data):
        with self.lock:
            self.data[key] = bytes(data)

    def get(self, key, into):
        blob = self._blob(key)
        if len(blob) > len(into):
            raise StorageError(f"{key}: {len(blob)} bytes do not fit", key)
        into[: len(blob)] = blob
        return len(blob)

    def get_range(self, key, offset, into):
        part = self._blob(key)[offset : offset + len(into)]
        into[: len(part)] = part
        return len(part)

    def writer(self, key):
        return _MemWriter(self, key)

    def stat(self, key):
        return ObjectInfo(key, len(self._blob(key)))

    def list(self, prefix="", delimiter=None) -> Iterator[str]:
        with self.lock:
            keys = sorted(k for k in self.data if k.startswith(prefix))
        seen = set()
        for k in keys:
            head, sep, _ = k[len(prefix) :].partition(delimiter or "\\0")
            out = prefix + head + sep if delimiter and sep else k
            if out not in seen:
                seen.add(out)
                yield out

    def delete(self, key):
        with self.lock:
            if self.data.pop(key, None) is None:
                raise NotFound(f"no such object: {key}", key)

    def free_bytes(self):
        with self.lock:
            return self.settings.capacity - sum(map(len, self.data.values()))


class _MemWriter(Writer):
    def __init__(self, b: MemBackend, key: str):
        self.b, self.key, self.parts = b, key, []

    def write(self, chunk):
        self.parts.append(bytes(chunk))

    def close(self):
        self.b.put(self.key, b"".join(self.parts))

    def abort(self):
        self.parts = []
'''

MEMTEST_YAML = """\
# in-memory store (a test's backend)
type: memtest
capacity: 1073741824
mode: plain
token: null
ratio: 0.5
"""


def _documented(name: str) -> dict:
    doc = OmegaConf.to_container(OmegaConf.load(ROOT / f"workload_configs/storage/{name}.yaml"))
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("name", known())
def test_the_yaml_the_schema_and_the_settings_name_the_same_keys(name: str) -> None:
    """One list of keys (the backend's Settings): the Hydra schema and the documented YAML
    follow it, with the same defaults."""
    cls = backend_class(name)
    settings = {f.name for f in dataclasses.fields(cls.Settings)}
    schema = {f.name: f.default for f in dataclasses.fields(storage_schema(name))}
    documented = _documented(name)
    assert documented["type"] == cls.name == name == schema["type"]
    assert set(documented) - {"type"} == settings == set(schema) - {"type"}
    assert documented == schema


def test_every_yaml_under_storage_is_a_registered_backend() -> None:
    yamls = sorted(p.stem for p in (ROOT / "workload_configs/storage").glob("*.yaml"))
    assert yamls == known() and {"posix", "s3"} <= set(yamls)


def test_an_unknown_type_is_one_line_naming_the_known_ones() -> None:
    for bad in ("nfs", "base", "settings", "../posix", ""):
        with pytest.raises(UsageError) as err:
            open_backend({"type": bad})
        line = str(err.value)
        assert "\n" not in line and f"storage.type={bad!r}" in line and "posix, s3" in line


def test_every_verb_has_one_answer() -> None:
    """Defined verbs are native, left-out ones unsupported (or emulated through other verbs),
    an emulation declared where the medium has none."""
    posix, s3 = backend_class("posix"), backend_class("s3")
    assert set(posix.capabilities) == set(s3.capabilities)
    assert posix.capabilities["rename"] == posix.capabilities["rmdir"] == "native"
    assert s3.capabilities["rename"] == s3.capabilities["mkdir"] == "emulated"
    assert s3.capabilities["evict"] == "unsupported" and posix.capabilities["evict"] == "native"
    assert posix.capabilities["delete_many"] == "emulated" and s3.capabilities["delete_many"] == "native"

    # a subclass that declares an emulation keeps the rest of its parent's answers
    class FakeCopyRename(posix):
        capabilities = {"rename": "emulated"}

    assert FakeCopyRename.capabilities == posix.capabilities | {"rename": "emulated"}
    with pytest.raises(TypeError, match="names no verb: fly"):
        type("FakeFlying", (posix,), {"capabilities": {"fly": "native"}})


def test_posix_describe_keeps_its_keys_and_says_what_a_write_means(tmp_path: Path) -> None:
    b = open_backend({"type": "posix"}, str(tmp_path))
    d = b.describe()
    assert {"backend", "root", "direct", "fsync", "fsync_source"} <= set(d)
    assert d["root"] == str(tmp_path / "data") and d["fsync"] == "none" and d["fsync_source"] == "default"
    assert d["durability"].startswith("none") and d["cache_control"] == "fadvise_dontneed"
    b.ask_durable("workload")
    d = b.describe()
    assert (d["fsync"], d["fsync_source"], d["durability_source"]) == ("file", "workload", "workload")
    b.put("k", b"x" * 10)
    assert b.fsync_counters()[0] == b.counters.as_dict()["fsync_calls"] == 1


@pytest.fixture()
def memtest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A new backend dropped in as one file on the package's path (and its documented YAML in a
    copy of the config directory); removed from the table afterwards."""
    from dlio_ext.storage import base

    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "memtest.py").write_text(MEMTEST)
    monkeypatch.setattr(storage_pkg, "__path__", [*storage_pkg.__path__, str(plugins)])
    configs = tmp_path / "configs"
    shutil.copytree(ROOT / "workload_configs", configs)
    (configs / "storage/memtest.yaml").write_text(MEMTEST_YAML)
    monkeypatch.setenv("DLIO_EXT_CONFIG_DIR", str(configs))
    monkeypatch.delenv("DLIO_EXT_MEMTEST_TOKEN", raising=False)
    yield plugins
    base.BACKENDS.classes.pop("memtest", None)
    sys.modules.pop("dlio_ext.storage.memtest", None)


def test_a_new_backend_file_is_found_by_name(memtest: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = backend_class("memtest")
    assert cls.name == "memtest" and "memtest" in known()
    # its settings: defaults, the environment for an unset key, a secret that never shows
    monkeypatch.setenv("DLIO_EXT_MEMTEST_TOKEN", "tok-not-a-secret-zzz")
    b = open_backend({"type": "memtest", "capacity": "4096", "token": None})
    assert (b.settings.capacity, b.settings.mode, b.settings.ratio) == (4096, "plain", 0.5)
    assert b.settings.token == "tok-not-a-secret-zzz"
    d = b.describe()
    assert d["backend"] == "memtest" and "token" not in d and d["capacity"] == 4096
    assert d["durability_source"] == "medium" and d["cache_control"] == "none"
    assert "tok-not-a-secret-zzz" not in repr(b.settings) + str(d)
    # the default rule answers for every verb it left out
    assert (b.supports("put"), b.supports("rename"), b.supports("delete_many")) == (
        "native",
        "unsupported",
        "emulated",
    )
    b.put("a/b", b"hello")
    buf = memoryview(bytearray(8))
    assert b.get("a/b", buf) == 5 and bytes(buf[:5]) == b"hello"
    assert b.room() == ("memtest", "free space at memtest") and b.free_bytes() == 4091


@pytest.mark.parametrize(
    "cfg, words",
    [
        ({"capacity": 0}, "storage.capacity=0 must be >= 1"),
        ({"capacity": "lots"}, "storage.capacity='lots' must be an integer"),
        ({"capacity": 1.5}, "storage.capacity=1.5 must be an integer"),
        ({"mode": "loose"}, "storage.mode='loose' is not allowed; use one of: plain, strict"),
        ({"ratio": 2}, "storage.ratio=2.0 must be <= 1"),
        ({"ratio": "half"}, "storage.ratio='half' must be a number"),
        ({"colour": "red"}, "unknown key storage.colour; storage.type=memtest accepts: type, capacity, mode"),
        ({"mode": "strict", "ratio": 1}, "storage.ratio=1.0 is too high for mode=strict; use at most 0.9"),
    ],
)
def test_a_new_backends_bad_settings_are_one_line(memtest: Path, cfg: dict, words: str) -> None:
    with pytest.raises(UsageError) as err:
        open_backend({"type": "memtest", **cfg})
    assert "\n" not in str(err.value) and words in str(err.value)


def test_a_new_backend_is_validated_through_the_run_config(memtest: Path) -> None:
    from dlio_ext.run.harness import load_config

    cfg = load_config(["storage=memtest", "storage.capacity=8192"])
    assert cfg.storage.capacity == 8192 and cfg.storage.type == "memtest"
    for args, words in (
        (["storage=memtest", "storage.mode=loose"], "storage.mode='loose' is not allowed"),
        (["storage=memtest", "storage.capacity=big"], "storage.capacity='big' has the wrong type"),
        (["storage=memtest", "storage.ratio=-1"], "storage.ratio=-1.0 must be >= 0"),
    ):
        with pytest.raises(UsageError, match=words):
            load_config(args)


def test_a_new_backend_runs_a_workload_through_the_cli(memtest: Path, tmp_path: Path) -> None:
    """The real CLI in its own process, the new file on the package's path: a storage_sweep
    runs on it end to end, and the summary records it."""
    boot = (
        "import sys; import dlio_ext.storage as s; s.__path__.append(sys.argv[1]); "
        "from dlio_ext.cli import main; sys.exit(main(sys.argv[2:]))"
    )
    args = [
        "run",
        "storage=memtest",
        "storage.capacity=10000000",
        "workload.objects_per_rank=6",
        "workload.object_size=8192",
        f"run.results_dir={tmp_path}/r",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "DLIO_EXT_S3_"))}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.run(
        [PY, "-c", boot, str(memtest), *args], capture_output=True, text=True, env=env, timeout=300
    )
    d = Done(p.returncode, p.stdout, p.stderr)
    assert d.code == 0, d.err
    s = d.summary()
    assert (
        s["valid"] is True and s["storage"]["backend"] == "memtest" and s["storage"]["capacity"] == 10000000
    )
    assert s["phases"]["write"]["ops"] == 6 and s["phases"]["read_sequential"]["errors"] == 0
    assert res.validate(s) == []  # its describe() fits the summary's shipped schema
    # too big for its capacity: the preflight check refuses it in the backend's own words
    p = subprocess.run(
        [PY, "-c", boot, str(memtest), *args, "storage.capacity=4096"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "but memtest has 4.1 kB free" in p.stderr and "free space at memtest" in p.stderr


def test_config_imports_no_backend() -> None:
    """config is data: it learns the storage schema from the registry it is handed."""
    code = textwrap.dedent(
        """
        import sys
        import dlio_ext.config, dlio_ext.config.schema
        print(sorted(m for m in sys.modules if m.startswith(("dlio_ext.storage", "dlio_ext.workloads"))))
        """
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_a_required_key_names_where_it_may_come_from() -> None:
    from dataclasses import dataclass, field

    from dlio_ext.storage.settings import Settings, setting

    @dataclass(frozen=True)
    class NeedsWhere(Settings):
        where: str = setting(env="DLIO_EXT_TEST_WHERE")
        tags: tuple = field(default_factory=tuple)

    with pytest.raises(UsageError) as err:
        NeedsWhere.from_config({"type": "t"}, env={})
    assert str(err.value) == "storage.where is not set; set storage.where or DLIO_EXT_TEST_WHERE"
    got = NeedsWhere.from_config({"where": ""}, env={"DLIO_EXT_TEST_WHERE": "/x"})
    assert (got.where, got.tags) == ("/x", ())
