"""The server state: the served model reference, kept in step with the registry alias (polling, hot swap)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from mlpipeline.serving.loading import LoadedModel, load_model_version, utc_now
from mlpipeline.serving.metrics import ServingMetrics

log = logging.getLogger(__name__)


class ModelServer:
    """Owns the served model reference and keeps it in step with the registry alias.

    A new version is downloaded, unpickled and warmed up completely before one reference is swapped, so requests
    never see a half-loaded model and a broken version never replaces a working one.
    """

    def __init__(self, *, tracking_uri: str, model_name: str, alias: str, poll_seconds: float) -> None:
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.alias = alias
        self.poll_seconds = poll_seconds
        self.metrics = ServingMetrics()
        self.started_at = time.monotonic()
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        # Requests read this once per call; a reload replaces it with one assignment (atomic under the GIL).
        self._model: LoadedModel | None = None
        self.last_error: str | None = None
        self.last_checked_at: str | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def model(self) -> LoadedModel | None:
        return self._model

    def _aliased_version(self) -> str | None:
        """The version the alias points at, or None if the model or the alias does not exist (yet)."""
        from mlflow.exceptions import MlflowException

        try:
            registered = self._client.get_registered_model(self.model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        version = (registered.aliases or {}).get(self.alias)
        return None if version is None else str(version)

    def _fail(self, message: str) -> None:
        if message != self.last_error:
            log.error("%s", message)
        self.last_error = message
        self.metrics.reload_failures.inc()

    def refresh(self, *, force: bool = False) -> bool:
        """Bring the served model in line with the alias. Returns False if that failed (the old model stays)."""
        with self._reload_lock:
            self.last_checked_at = utc_now()
            try:
                version = self._aliased_version()
            except Exception as exc:
                self._fail(f"could not read alias {self.alias!r} of {self.model_name!r}: {exc}")
                return False
            if version is None:
                self._unload()
                return True
            current = self._model
            if current is not None and current.version == version and not force:
                self.last_error = None
                return True
            return self._swap_to(version)

    def _unload(self) -> None:
        # Nothing promoted (yet), or the alias was removed on purpose (e.g. a deploy rolled back a first version):
        # the registry is the source of truth, so serve nothing rather than an unapproved model.
        current = self._model
        if current is not None:
            log.warning("alias %r of %r is gone; unloading version %s", self.alias, self.model_name, current.version)
            self._model = None
            self.metrics.serving(None)
        self.last_error = None

    def _swap_to(self, version: str) -> bool:
        current = self._model
        started = time.perf_counter()
        try:
            loaded = load_model_version(self._client, self.tracking_uri, self.model_name, version, self.alias)
        except Exception as exc:
            keeping = f"; still serving version {current.version}" if current else ""
            self._fail(f"loading {self.model_name} version {version} failed: {type(exc).__name__}: {exc}{keeping}")
            return False
        self._model = loaded  # the swap
        self.last_error = None
        self.metrics.reloads.inc()
        self.metrics.serving(loaded)
        log.info(
            "serving %s version %s (loaded in %.2f s; numpy fast path %s)",
            self.model_name,
            version,
            time.perf_counter() - started,
            "on" if loaded.fast_path.active else "off",
        )
        return True

    def start_polling(self) -> None:
        if self._poller is not None or self.poll_seconds <= 0:
            return
        self._stop.clear()
        self._poller = threading.Thread(target=self._poll, name=f"model-poller-{self.model_name}", daemon=True)
        self._poller.start()

    def stop_polling(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout)
            self._poller = None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # the poller must never die; refresh() already records expected failures
                log.exception("unexpected error while polling the model registry")

    def health(self) -> tuple[int, dict[str, Any]]:
        model = self._model
        body: dict[str, Any] = {
            "model_name": self.model_name,
            "alias": self.alias,
            "last_error": self.last_error,
            "last_checked_at": self.last_checked_at,
            "uptime_seconds": round(time.monotonic() - self.started_at, 3),
        }
        if model is None:
            return 503, {"status": "no_model", "model_version": None, **body}
        status = "degraded" if self.last_error else "ok"
        return 200, {"status": status, "model_version": model.version, "loaded_at": model.loaded_at, **body}

    def model_body(self) -> tuple[int, dict[str, Any]]:
        model = self._model
        if model is None:
            return 503, {
                "status": "no_model",
                "name": self.model_name,
                "alias": self.alias,
                "version": None,
                "detail": f"no version of {self.model_name!r} is loaded (alias {self.alias!r})",
                "last_error": self.last_error,
                "fast_path": {"active": False, "reason": "no model is loaded"},
            }
        return 200, {
            "status": "degraded" if self.last_error else "ok",
            **model.describe(),
            "last_error": self.last_error,
        }
