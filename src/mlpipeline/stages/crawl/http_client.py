"""HTTP for the crawl: GET with retries and exponential backoff, and a byte budget shared by all requests.

5xx, 429, timeouts and connection errors are retried ``crawl_max_retries`` times (``crawl_backoff_seconds``,
doubling; a numeric ``Retry-After`` is honoured up to 60 s); other 4xx fail at once with a hint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from mlpipeline import __version__
from mlpipeline.config import PipelineConfig
from mlpipeline.stages.crawl.result import CrawlError

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
_MAX_RETRY_AFTER = 60.0
_HINTS: dict[int, str] = {
    401: "the source needs credentials",
    403: "access to the source is forbidden",
    404: "check crawl_url",
    410: "the resource is gone (for a paginated API: the data changed mid-crawl; retry)",
}

T = TypeVar("T")


class Budget:
    """Bytes left of ``crawl_max_bytes`` over all requests of one crawl."""

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
    snippet = response.read()[:300].decode("utf-8", "replace").strip()
    hint = _HINTS.get(status, "check crawl_url and the source")
    return CrawlError(
        f"GET {url} answered {_describe_status(response)}: {hint}" + (f" (body: {snippet!r})" if snippet else ""),
        retryable=status in (408, 410),
    )


class HttpClient:
    """One crawl's connection pool; counts the requests it sends."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.client = httpx.Client(
            timeout=httpx.Timeout(config.crawl_timeout_seconds),
            follow_redirects=True,
            headers={"User-Agent": f"mlpipeline-crawler/{__version__}"},
        )
        self.requests = 0

    def close(self) -> None:
        self.client.close()

    def get(self, url: str, headers: dict[str, str], consume: Callable[[httpx.Response], T]) -> T:
        """GET ``url`` and hand a 2xx/304 response to ``consume`` (streaming), retrying transient failures.

        ``consume`` must start from scratch on each call: a retry repeats the whole request.
        """
        attempts = self.config.crawl_max_retries + 1
        delay = self.config.crawl_backoff_seconds
        last_problem = ""
        for attempt in range(1, attempts + 1):
            wait = delay
            try:
                self.requests += 1
                with self.client.stream("GET", url, headers=headers) as response:
                    status = response.status_code
                    if 200 <= status < 300 or status == 304:
                        return consume(response)
                    if status != 429 and status < 500:
                        raise _client_error(url, response)
                    last_problem = _describe_status(response)
                    wait = max(delay, _retry_after(response) or 0.0)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "network error"
                last_problem = f"{kind}: {type(exc).__name__}: {exc}".rstrip(": ")
            except httpx.HTTPError as exc:  # invalid URL, unsupported scheme, too many redirects, ...
                raise CrawlError(f"GET {url} failed: {type(exc).__name__}: {exc}; check crawl_url") from exc
            if attempt < attempts:
                log.warning("GET %s: %s (attempt %d/%d); retrying in %.2fs", url, last_problem, attempt, attempts, wait)
                time.sleep(wait)
                delay *= 2
        raise CrawlError(
            f"GET {url} failed after {attempts} attempt(s); last error: {last_problem}. Check that the source is up"
            " and reachable from this worker (crawl_url), or raise crawl_max_retries / crawl_timeout_seconds",
            retryable=True,
        )
