"""Hydra-composed run configuration, validated against typed schemas.

Composition is Hydra's (DLIO-style `key=value` and `++key=value` overrides over the YAML in
workload_configs/); validation is ours: every workload and backend declares a dataclass, and a key
it does not declare, a value of the wrong type or out of range is one `UsageError` line naming
the key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlio_ext.config.schema import RUN_SCHEMA
from dlio_ext.errors import UsageError

if TYPE_CHECKING:
    from omegaconf import DictConfig

# Hydra is imported where a configuration is composed (rank 0 of a run), OmegaConf where one is
# checked: the other ranks take the composition as plain data (~0.3 s of CPU a rank less)

#: a key whose last name part says it holds a credential (secret_key, access_key, session_token,
#: password, credentials, ...); not one that merely counts tokens (chunk_tokens, max_context_tokens)
SECRET_KEYS = re.compile(
    r"(^|[._])(secret|secret_key|secret_access_key|password|passwd|token|session_token|access_key|access_key_id|"
    r"credentials?)$",
    re.IGNORECASE,
)
REDACTED = "***"


def config_dir() -> Path:
    env = os.environ.get("DLIO_EXT_CONFIG_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "workload_configs"


def choices(group: str) -> list[str]:
    base = config_dir() / group
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.yaml"))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def compose(overrides: Sequence[str]) -> DictConfig:
    """Hydra composition with its errors folded into one line each."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    for ov in overrides:
        if "=" not in ov:
            raise UsageError(f"argument {ov!r} is not key=value; e.g. workload=storage_sweep storage=posix")
        key, _, value = ov.lstrip("+~").partition("=")
        if key in ("workload", "storage", "tier0") and value not in choices(key):
            raise UsageError(f"{key}={value!r} is unknown; choose one of: {', '.join(choices(key))}")
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name="dlio_ext"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, ConfigKeyError, OmegaConfBaseException) as exc:
        msg = _one_line(str(exc))
        m = re.search(r"Could not override '([^']+)'", msg) or re.search(
            r"Key '([^']+)' is not in struct", msg
        )
        if m:
            raise UsageError(
                f"unknown key {m.group(1)!r}; check the spelling, or add it with ++{m.group(1)}=... "
                "only if the workload declares it"
            ) from None
        raise UsageError(f"bad arguments: {msg}") from None


def _check_section(section: str, schema: type, node: Mapping[str, Any]) -> Any:
    """Merge into the typed schema: unknown keys and wrong types become one clear line."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    fields = {f.name for f in dataclasses.fields(schema)}
    for key in node:
        if key not in fields:
            raise UsageError(f"unknown key {section}.{key}; {section} accepts: {', '.join(sorted(fields))}")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), node)
        obj = OmegaConf.to_object(typed)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or getattr(exc, "key", "")
        field_type = {f.name: f.type for f in dataclasses.fields(schema)}.get(str(key).split(".")[-1], "")
        value = getattr(exc, "value", None)
        raise UsageError(
            f"{section}.{key}={value!r} has the wrong type; expected {_type_name(field_type)}"
        ) from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        problem = validate()
        if problem:
            raise UsageError(f"{section}.{problem}")
    return obj


def _type_name(t: object) -> str:
    s = t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")
    return {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}.get(s, s)


@dataclasses.dataclass
class RunConfig:
    """The composed, validated configuration of one run."""

    #: the whole composed configuration, resolved to plain data
    raw: dict[str, Any]
    run: Any
    storage: Any
    workload: Any
    workload_name: str
    #: the tier-0 backend's settings (the `tier0` group), None for tier0=none
    tier0: Any = None

    def resolved(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw)

    def redacted(self) -> dict[str, Any]:
        return redact(self.resolved())


def redact(obj: Any) -> Any:
    """A copy with every credential-like value replaced; safe to write into results."""
    if isinstance(obj, Mapping):
        return {
            k: (REDACTED if SECRET_KEYS.search(str(k)) and v not in (None, "") else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def redact_args(args: Sequence[str]) -> list[str]:
    """Command-line overrides with credential values hidden, for logs and results."""
    out = []
    for a in args:
        key, eq, _ = a.partition("=")
        out.append(f"{key}={REDACTED}" if eq and SECRET_KEYS.search(key) else a)
    return out


def composed(overrides: Sequence[str]) -> dict[str, Any]:
    """The Hydra composition of `overrides`, resolved to plain data (what `check` takes)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(compose(overrides), resolve=True)
    assert isinstance(raw, dict)
    return raw


def check(
    raw: dict[str, Any],
    workload_schema: Callable[[str], type],
    storage_schema: Callable[[str], type],
) -> RunConfig:
    """Validate a composed configuration. The schemas come from the registries, looked up by name
    (the config knows no workload or backend): each lookup raises UsageError for a name it does
    not know."""
    wl_node, st_node, run_node, t0_node = (
        raw["workload"],
        raw["storage"],
        raw["run"],
        raw.get("tier0", {"type": "none"}),
    )
    assert isinstance(wl_node, dict) and isinstance(st_node, dict) and isinstance(run_node, dict)
    assert isinstance(t0_node, dict)
    name = str(wl_node.get("name"))
    wl_schema = workload_schema(name)
    st_schema = storage_schema(str(st_node.get("type")))
    tier0 = None
    if t0_node.get("type", "none") != "none":
        tier0 = _check_section("tier0", storage_schema(str(t0_node.get("type"))), t0_node)
    elif len(t0_node) > 1:
        extra = sorted(k for k in t0_node if k != "type")
        raise UsageError(
            f"tier0.{extra[0]} is set but there is no tier-0: choose one with tier0=<{'|'.join(choices('tier0'))}>"
        )
    return RunConfig(
        raw=copy.deepcopy(raw),
        run=_check_section("run", RUN_SCHEMA, run_node),
        storage=_check_section("storage", st_schema, st_node),
        workload=_check_section("workload", wl_schema, wl_node),
        workload_name=name,
        tier0=tier0,
    )


def load(
    overrides: Sequence[str],
    workload_schema: Callable[[str], type],
    storage_schema: Callable[[str], type],
) -> RunConfig:
    """Compose and validate (`composed`, then `check`)."""
    return check(composed(overrides), workload_schema, storage_schema)
