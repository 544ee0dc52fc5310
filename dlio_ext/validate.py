"""Range checks every schema shares (run, storage settings, workload configs): each returns None
or "key=value is wrong because ...; use ..." (the caller adds the section name), so every check
reads the same to a user. A leaf module: anything may import it."""

from __future__ import annotations


def positive(name: str, value: float, *, allow_zero: bool = False) -> str | None:
    if value < 0 or (value == 0 and not allow_zero):
        return f"{name}={value} must be {'>= 0' if allow_zero else '> 0'}"
    return None


def one_of(name: str, value: object, allowed: tuple[object, ...]) -> str | None:
    if value not in allowed:
        return f"{name}={value!r} is not allowed; use one of: {', '.join(map(str, allowed))}"
    return None


#: threads (and buffers) a phase may keep in flight per rank: far beyond what any store rewards
MAX_IO_DEPTH = 1024


def io_depth(name: str, value: int) -> str | None:
    if not 0 < value <= MAX_IO_DEPTH:
        return f"{name}={value} must be within 1..{MAX_IO_DEPTH} (threads and buffers per rank)"
    return None


def key_prefix(name: str, value: str, *, allow_empty: bool = False) -> str | None:
    """A user-given path or key prefix must stay under the storage root or bucket prefix."""
    if not value:
        return None if allow_empty else f"{name} is empty; give a relative key prefix such as 'x/y'"
    parts = value.split("/")
    if value.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in value:
        return (
            f"{name}={value!r} must be a relative key prefix such as 'x/y' (no leading '/', "
            "no '.', '..' or empty part): it must stay under storage.root or the bucket prefix"
        )
    return None


def first_problem(*problems: str | None) -> str | None:
    return next((p for p in problems if p), None)
