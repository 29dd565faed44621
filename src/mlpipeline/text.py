"""Bounded text for messages that end up in JSON (error bodies, log records): no dependencies, so that the
prediction log's writer process can use it without importing the web framework."""

from __future__ import annotations

MAX_DETAIL_CHARS = 1024


def clip(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """At most ``limit`` bytes once JSON-encoded (a non-ASCII character encodes as up to 6 bytes)."""
    if not text.isascii():
        limit //= 6
    return text if len(text) <= limit else text[: limit - 3] + "..."
