"""HTTP for the crawl: GET with retries and exponential backoff, and a byte budget shared by all requests.

5xx, 429, timeouts and connection errors are retried ``crawl_max_retries`` times (``crawl_backoff_seconds``,
doubling; a numeric ``Retry-After`` is honoured up to 60 s) while the crawl's deadline leaves time; other 4xx fail
at once with a hint. Redirects are followed hop by hop (at most ``MAX_REDIRECTS``), each hop only to an allowed
origin (see :mod:`.guards`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import httpx

from mlpipeline import __version__
from mlpipeline.config import PipelineConfig
from mlpipeline.stages.crawl.guards import Deadline, OriginPolicy
from mlpipeline.stages.crawl.result import CrawlError

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_MAX_RETRY_AFTER = 60.0
_HINTS: dict[int, str] = {
    401: "the source needs credentials",
    403: "access to the source is forbidden",
    404: "check crawl_url",
    410: "the resource is gone (for a paginated API: the data changed mid-crawl; retry)",
}

T = TypeVar("T")


class Budget:
    """Bytes left of ``crawl_max_bytes`` over all requests of one crawl.

    Counted as decoded (after a ``Content-Encoding`` such as gzip), so a small compressed body that expands to
    more than the budget is stopped while it expands; one network chunk inflates to at most ~1,000 times its size.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, count: int, url: str) -> None:
        self.used += count
        if self.used > self.limit:
            raise CrawlError(
                f"{url}: the source is larger than crawl_max_bytes={self.limit} bytes (stopped after {self.used});"
                " raise crawl_max_bytes if this size is expected"
            )


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` set in its query string (replacing values already there)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _describe_status(response: httpx.Response) -> str:
    text = f"HTTP {response.status_code}"
    return f"{text} {response.reason_phrase}" if response.reason_phrase else text


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        return min(max(float(value), 0.0), _MAX_RETRY_AFTER)
    except ValueError:
        return None  # HTTP-date form: fall back to our own backoff


def _client_error(url: str, response: httpx.Response) -> CrawlError:
    """A 4xx that retrying will not fix (except 408 and 410, which another run may get past)."""
    status = response.status_code
    snippet = _head(response, 300).decode("utf-8", "replace").strip()
    hint = _HINTS.get(status, "check crawl_url and the source")
    return CrawlError(
        f"GET {url} answered {_describe_status(response)}: {hint}" + (f" (body: {snippet!r})" if snippet else ""),
        retryable=status in (408, 410),
    )


def _head(response: httpx.Response, limit: int) -> bytes:
    """The first ``limit`` bytes of an error body, never the whole of it: a huge or trickling 4xx body must not
    hold the crawl past its budget or deadline."""
    head = b""
    try:
        for chunk in response.iter_bytes():
            head += chunk
            if len(head) >= limit:
                break
    except httpx.HTTPError:
        pass
    return head[:limit]


class _Transient(Exception):
    """One attempt failed in a way a retry may get past (5xx, 429, timeout, network error)."""

    def __init__(self, problem: str, retry_after: float = 0.0) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after


class HttpClient:
    """One crawl's connection pool, origin policy and deadline; counts the requests it sends.

    Redirects are followed here, hop by hop, so each hop's origin is checked before it is requested.
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.client = httpx.Client(
            timeout=httpx.Timeout(config.crawl_timeout_seconds),
            follow_redirects=False,
            headers={"User-Agent": f"mlpipeline-crawler/{__version__}"},
        )
        self.origins = OriginPolicy(config.crawl_url, config.crawl_allowed_origins)
        self.deadline = Deadline(config.crawl_deadline_seconds)
        self.requests = 0

    def close(self) -> None:
        self.client.close()

    def body(self, response: httpx.Response, url: str) -> Iterator[bytes]:
        """The body's chunks as they arrive (decoded), checking the deadline on each one."""
        for chunk in response.iter_bytes():
            self.deadline.check(url)
            yield chunk

    def get(self, url: str, headers: dict[str, str], consume: Callable[[httpx.Response], T]) -> T:
        """GET ``url`` and hand a 2xx/304 response to ``consume`` (streaming), retrying transient failures.

        ``consume`` must start from scratch on each call: a retry repeats the whole request.
        """
        attempts = self.config.crawl_max_retries + 1
        delay = self.config.crawl_backoff_seconds
        for attempt in range(1, attempts + 1):
            try:
                return self._attempt(url, headers, consume)
            except _Transient as failure:
                last_problem, wait = failure.problem, max(delay, failure.retry_after)
            except httpx.HTTPError as exc:  # invalid URL, unsupported scheme, ...
                raise CrawlError(f"GET {url} failed: {type(exc).__name__}: {exc}; check crawl_url") from exc
            if attempt == attempts:
                break
            if not self.deadline.allows(wait):
                last_problem += (
                    f"; no time left for another attempt within crawl_deadline_seconds={self.deadline.seconds:g}"
                )
                break
            log.warning("GET %s: %s (attempt %d/%d); retrying in %.2fs", url, last_problem, attempt, attempts, wait)
            time.sleep(wait)
            delay *= 2
        raise CrawlError(
            f"GET {url} failed after {attempt} attempt(s); last error: {last_problem}. Check that the source is up"
            " and reachable from this worker (crawl_url), or raise crawl_max_retries / crawl_timeout_seconds",
            retryable=True,
        )

    def _attempt(self, url: str, headers: dict[str, str], consume: Callable[[httpx.Response], T]) -> T:
        """One request, following up to ``MAX_REDIRECTS`` redirects, each checked against the origin policy."""
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            timeout = self.deadline.timeout(self.config.crawl_timeout_seconds, url)
            self.requests += 1
            try:
                with self.client.stream("GET", current, headers=headers, timeout=timeout) as response:
                    status = response.status_code
                    if status in _REDIRECT_STATUSES:
                        current = self._redirect_target(url, current, response)
                        continue
                    if 200 <= status < 300 or status == 304:
                        return consume(response)
                    if status != 429 and status < 500:
                        raise _client_error(current, response)
                    raise _Transient(_describe_status(response), _retry_after(response) or 0.0)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if self.deadline.expired:
                    raise self.deadline.error(url) from None
                kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "network error"
                raise _Transient(f"{kind}: {type(exc).__name__}: {exc}".rstrip(": ")) from None
        raise CrawlError(f"GET {url}: more than {MAX_REDIRECTS} redirects; check crawl_url")

    def _redirect_target(self, url: str, current: str, response: httpx.Response) -> str:
        """Where a redirect leads, if its origin is allowed. The response body is never read or quoted."""
        location = response.headers.get("Location", "").strip()
        if not location:
            raise CrawlError(f"GET {url}: HTTP {response.status_code} redirect without a Location; check crawl_url")
        target = urljoin(current, location)
        self.origins.check(target, source=f"GET {url}", how=f"an HTTP {response.status_code} redirect")
        return target
