"""Where and for how long a crawl may go: the origins it may reach, and its deadline.

* Origins: a crawl reads ``crawl_url``'s origin (scheme, host and port) and the origins in
  ``crawl_allowed_origins``, nothing else. Every redirect hop and every pagination ``next`` link is checked, so a
  source cannot send the worker to an internal address (SSRF) and get the answer stored as raw data or quoted in
  an error email.
* Deadline: ``crawl_deadline_seconds`` bounds the whole crawl (every request, every chunk received, every retry
  and its backoff), so a source that trickles bytes cannot hold a worker for ``crawl_timeout_seconds`` per read,
  read after read. A read that stalls completely is bounded by its own timeout, which is never longer than what is
  left of the deadline when the request starts.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from mlpipeline.stages.crawl.result import CrawlError

_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_SHOWN_CHARS = 200  # an origin in a message: a hostile host name cannot make the message large


def origin_of(url: str) -> str | None:
    """``scheme://host:port`` (lower case, default port filled in), or None for a URL without an http(s) host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return f"{scheme}://{parts.hostname.lower()}:{port or _DEFAULT_PORTS[scheme]}"


class OriginPolicy:
    """The origins one crawl may reach: ``crawl_url``'s and those in ``crawl_allowed_origins``."""

    def __init__(self, crawl_url: str, allowed: list[str]) -> None:
        self.home = origin_of(crawl_url)
        self.allowed = {origin for origin in (self.home, *map(origin_of, allowed)) if origin}

    def check(self, url: str, *, source: str, how: str) -> None:
        """Refuse ``url`` (reached from ``source`` by ``how``: "a redirect", "a next link") outside the allowed set.

        Not retryable: the source would send the crawl to the same place again.
        """
        origin = origin_of(url)
        if origin in self.allowed:
            return
        shown = (origin or urlsplit(url).scheme + ": URL")[:_MAX_SHOWN_CHARS]
        raise CrawlError(
            f"{source}: {how} leads to {shown}, outside the crawl's origin {self.home}; refused. Add that origin to"
            " crawl_allowed_origins only if it is trusted"
        )


class Deadline:
    """The end of one crawl, ``crawl_deadline_seconds`` after it started (monotonic clock)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends_at = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.ends_at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def allows(self, wait: float) -> bool:
        """Whether waiting ``wait`` seconds still leaves time for another request."""
        return self.remaining() > wait

    def timeout(self, per_request: float, url: str) -> float:
        """The timeout for one request: ``per_request``, but never past the deadline."""
        self.check(url)
        return min(per_request, self.remaining())

    def check(self, url: str) -> None:
        if self.expired:
            raise self.error(url)

    def error(self, url: str) -> CrawlError:
        """Not retryable: a source this slow would hold the next try's worker just as long."""
        return CrawlError(
            f"{url}: the crawl did not finish within crawl_deadline_seconds={self.seconds:g}; the source is too"
            " slow (or trickles its data). Raise crawl_deadline_seconds if it is really that slow"
        )
