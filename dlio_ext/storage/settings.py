"""A backend's settings: one dataclass, each key declared once.

A field says its type and default; `setting(...)` adds what else a key needs (allowed values or
range, the environment variable that stands in when the key is unset, whether it is a secret).
From that one declaration come the bad-input messages (`from_config`: one `UsageError` line
naming `storage.<key>` and what to give instead), the typed schema Hydra validates the composed
`storage` group against (`schema`), and what results may record (`redacted`: no secret). The
documented YAML (workload_configs/storage/<name>.yaml) lists the same keys; a test holds them
equal.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit, urlunsplit

from dlio_ext.errors import UsageError
from dlio_ext.validate import one_of


@dataclass(frozen=True)
class Rule:
    """What a key allows beyond its type (see `setting`)."""

    choices: tuple[object, ...] | None = None
    low: float | None = None
    #: the low bound itself is refused ("> 0" rather than ">= 0")
    strict: bool = False
    high: float | None = None
    env: str | None = None
    secret: bool = False
    #: a check of its own: None, or "key=value is wrong because ...; use ..." (no "storage.")
    check: Callable[[str, Any], str | None] | None = None


def setting(
    default: Any = MISSING,
    *,
    choices: tuple[object, ...] | None = None,
    low: float | None = None,
    strict: bool = False,
    high: float | None = None,
    env: str | None = None,
    secret: bool = False,
    check: Callable[[str, Any], str | None] | None = None,
) -> Any:
    """A dataclass field with its rule. A key left unset (null or "") takes `env`'s value, if
    that variable is set, else `default`; a field without a default must be given. A secret never
    appears in a repr, a message or results."""
    rule = Rule(choices, low, strict, high, env, secret, check)
    return field(default=default, repr=not secret, metadata={"setting": rule})


def rule_of(f: dataclasses.Field[Any]) -> Rule:
    return f.metadata.get("setting") or Rule()


def redact_url(url: str | None) -> str | None:
    """A URL without any user:password@ part, for messages and results."""
    if not url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _plain(t: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed) of an annotation like `int | None`."""
    if get_origin(t) in (Union, types.UnionType):
        args = [a for a in get_args(t) if a is not type(None)]
        return (args[0] if len(args) == 1 else t), True
    return t, False


def convert(name: str, value: Any, kind: Any) -> Any:
    """`value` as a `kind`, or one line saying what the key takes."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise UsageError(f"storage.{name}={value!r} must be true or false")
    if kind in (int, float):
        try:
            if isinstance(value, bool) or (
                kind is int and isinstance(value, float) and not value.is_integer()
            ):
                raise ValueError
            return kind(value)
        except (TypeError, ValueError):
            what = "an integer" if kind is int else "a number"
            raise UsageError(f"storage.{name}={value!r} must be {what}") from None
    return str(value) if kind is str else value


def _problem(name: str, value: Any, rule: Rule) -> str | None:
    if rule.choices is not None and value not in rule.choices:
        return one_of(name, value, rule.choices)
    if rule.low is not None and (value < rule.low or (rule.strict and value == rule.low)):
        return f"{name}={value} must be {'>' if rule.strict else '>='} {rule.low:g}"
    if rule.high is not None and value > rule.high:
        return f"{name}={value} must be <= {rule.high:g}"
    return rule.check(name, value) if rule.check is not None else None


class Settings:
    """Base of every backend's settings dataclass (declare the fields with `setting`)."""

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Any:
        """The settings a `storage` group gives (its "type" key aside); unset keys from `env`
        (default: the process environment). Bad input raises one UsageError line."""
        env = os.environ if env is None else env
        names = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in cfg if k not in names and k != "type")
        if unknown:
            raise UsageError(
                f"unknown key storage.{unknown[0]}; storage.type={cfg.get('type')} accepts: "
                f"{', '.join(['type', *names])}"
            )
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            rule = rule_of(f)
            value = cfg.get(f.name)
            if (value is None or value == "") and rule.env:
                value = env.get(rule.env) or None
            if value is None or value == "":
                if f.default is MISSING and f.default_factory is MISSING:
                    also = f" or {rule.env}" if rule.env else ""
                    raise UsageError(f"storage.{f.name} is not set; set storage.{f.name}{also}")
                continue  # the dataclass's default
            value = convert(f.name, value, _plain(hints[f.name])[0])
            problem = _problem(f.name, value, rule)
            if problem:
                raise UsageError(f"storage.{_shown(problem, rule)}")
            values[f.name] = value
        out = cls(**values)
        problem = out.check()
        if problem:
            raise UsageError(f"storage.{problem}")
        return out

    def check(self) -> str | None:
        """Rules across keys, after each key passed its own: None, or "key=value ...; use ..."."""
        return None

    @classmethod
    def schema(cls, type_name: str) -> type:
        """The typed dataclass Hydra/OmegaConf merges the composed `storage` group into.

        Numbers and flags keep their types (a wrong type is caught while merging); any other key
        is a string that may be null (unset: its environment variable, or its default). Its
        `validate` hands the values to `from_config`, which raises the one-line UsageError."""
        hints = get_type_hints(cls)
        keys: list[tuple[str, Any, Any]] = [("type", str, type_name)]
        for f in fields(cls):
            kind = hints[f.name] if _plain(hints[f.name])[0] in (bool, int, float) else str | None
            unset = f.default is MISSING or rule_of(f).env is not None
            keys.append((f.name, kind, None if unset else f.default))  # a factory's value: null

        def validate(self: Any) -> str | None:
            cls.from_config(dataclasses.asdict(self))
            return None

        return make_dataclass(f"{cls.__name__}Schema", keys, namespace={"validate": validate})

    def redacted(self) -> dict[str, object]:
        """The keys and values fit for results: a secret left out (not even its name: results
        name no credential), a URL without its user:password@."""
        return {
            f.name: redact_url(v) if isinstance(v := getattr(self, f.name), str) else v
            for f in fields(self)
            if not rule_of(f).secret
        }


def _shown(problem: str, rule: Rule) -> str:
    """A secret's value never appears in a message."""
    if not rule.secret:
        return problem
    name = problem.split("=", 1)[0]
    return f"{name} is not valid" if "=" in problem else problem
