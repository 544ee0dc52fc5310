"""HTML built so that nothing from a run can become markup: every value is escaped on its way
in unless it is `Html`, which only the builders here make. A key, a phase name or an error message
carrying `<script>` is shown as text.

Numbers go into cells with their exact value in `data-v` (what a test or a script reads back) and
a rounded text for people.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


class Html(str):
    """Markup made by this module's builders: trusted, never escaped again."""


def esc(value: Any) -> Html:
    if isinstance(value, Html):
        return value
    return Html(html.escape(str(value), quote=True))


def join(parts: Iterable[Any]) -> Html:
    return Html("".join(esc(p) for p in parts))


def tag(name: str, *children: Any, **attrs: Any) -> Html:
    """<name attrs>children</name>; attribute names end in _ where Python needs it (class_)."""
    text = "".join(
        f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None
    )
    return Html(f"<{name}{text}>{join(children)}</{name}>")


def fmt(value: Any, spec: str = "") -> str:
    """A number for people: `spec` for floats (default: 4 significant digits), thousands
    separators for ints; '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if spec:
            return format(value, spec)
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    return str(value)


def num(value: Any, spec: str = "") -> Html:
    """A table cell holding a number: its exact value in data-v, `fmt(value, spec)` as text."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return tag("td", fmt(value), class_="none" if value is None else None)
    return tag("td", fmt(value, spec), class_="n", data_v=repr(value))


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "", id_: str | None = None) -> Html:
    """A table; a row's item that is already a cell (`num`, `tag("td", ...)`) stays one, any other
    value becomes an escaped text cell."""
    body = []
    for row in rows:
        cells = [_cell(c) for c in row]
        body.append(tag("tr", join(cells)))
    return tag(
        "table",
        tag("thead", tag("tr", join(tag("th", h) for h in head))),
        tag("tbody", join(body)),
        class_=cls or None,
        id=id_,
    )


def _cell(c: Any) -> Html:
    if isinstance(c, Html):
        return c if c.startswith("<td") else tag("td", c)
    return tag("td", fmt(c))


def pairs(items: Mapping[str, Any] | Iterable[tuple[str, Any]], cls: str = "kv") -> Html:
    """A two-column table of names and values; a dict or list value is shown as compact JSON."""
    rows = items.items() if isinstance(items, Mapping) else items
    return table(("", ""), ((k, _plain(v)) for k, v in rows), cls=cls)


def _plain(v: Any) -> Any:
    if isinstance(v, dict | list):
        return json.dumps(v, default=str)
    return v


def flat(d: Mapping[str, Any], prefix: str = "", limit: int = 400) -> list[tuple[str, Any]]:
    """A nested mapping as (dotted key, leaf) rows, lists of scalars kept whole, at most `limit`
    rows (a generic view of a section no view knows)."""
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out += flat(v, key + ".", limit)
        else:
            out.append((key, v))
        if len(out) >= limit:
            return out[:limit]
    return out


def blocks(items: Iterable[tuple[str, Mapping[str, Any]]]) -> Html:
    """Small named tables side by side (wrapping), each a heading over its `pairs`."""
    return tag("div", join(tag("div", tag("h4", name), pairs(d)) for name, d in items if d), class_="grid")


def section(anchor: str, title: str, *body: Any) -> Html:
    return tag("section", tag("h2", title), *body, id=anchor)


def png(data: bytes, alt: str) -> Html:
    """An image embedded in the page (no file or network needed to view it)."""
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return Html(f'<figure><img src="{src}" alt="{esc(alt)}"><figcaption>{esc(alt)}</figcaption></figure>')


def pre(text: str) -> Html:
    return tag("pre", text)


def note(text: Any, cls: str = "note") -> Html:
    return tag("p", text, class_=cls)
