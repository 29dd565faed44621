"""Small HTML building blocks. Every text that comes from data (column names, labels, reasons, paths) goes through
:func:`esc`; images are embedded as base64 PNG data URIs, so the page needs nothing else to display."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

UNAVAILABLE = "not available"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def number(value: Any, digits: int = 4) -> str:
    """A record value as short text: floats rounded, None and NaN as "—"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) >= 10**digits or (value and abs(value) < 1e-3)
            else f"{value:.{digits}f}"
        )
    return str(value)


def table(headers: Sequence[Any], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(number(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_values(pairs: Iterable[tuple[Any, Any]]) -> str:
    rows = "".join(f"<tr><th>{esc(key)}</th><td>{esc(number(value))}</td></tr>" for key, value in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def image(png: bytes, alt: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{esc(alt)}">'


def unavailable(why: str) -> str:
    return f'<p class="na">{UNAVAILABLE}: {esc(why)}</p>'


def paragraph(text: str, css: str = "") -> str:
    attribute = f' class="{esc(css)}"' if css else ""
    return f"<p{attribute}>{esc(text)}</p>"


def bullets(items: Iterable[Any]) -> str:
    return "<ul>" + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>"


def section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{body}</section>'


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1100px;color:#222;
padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
thead th{background:#f4f4f4}table.kv th{background:#fafafa;font-weight:600}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
.na{color:#777;font-style:italic}
.verdict{font-size:1.3em;font-weight:700;padding:.4em .8em;display:inline-block;border-radius:4px;color:#fff}
.deploy{background:#2e7d32}.reject{background:#c62828}.unchanged{background:#546e7a}.unknown{background:#888}
nav a{margin-right:.8em;font-size:.9em}
"""
