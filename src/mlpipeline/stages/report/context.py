"""The report's inputs: the run's records, and the candidates' models and answers, each loaded at most once and
only when a section needs them (a rejected or unchanged run may need none)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from mlpipeline.stages.report.predictions import Answers, answers, load_model
from mlpipeline.stages.report.records import CandidateRecord, RunRecords
from mlpipeline.tasks import DEFAULT_METRIC

log = logging.getLogger(__name__)


@dataclass
class ReportContext:
    records: RunRecords
    _models: dict[str, Any] = field(default_factory=dict)
    _answers: dict[str, Answers | Exception] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.records.task

    @property
    def metric(self) -> str:
        """The metric the run was judged by."""
        judged = (self.records.validate or {}).get("metric") or self.records.config.validation_metric
        return str(judged or DEFAULT_METRIC.get(self.task, "accuracy"))

    @property
    def positive_label(self) -> str | None:
        label = self.records.config.dataset_schema.positive_label
        return label if label is not None else (self.records.etl or {}).get("positive_label")

    def model(self, candidate: CandidateRecord) -> Any:
        """The candidate's model, loaded and verified once (an error is raised again on each call)."""
        if candidate.name not in self._models:
            try:
                self._models[candidate.name] = load_model(self.records.config, candidate)
            except Exception as exc:
                log.warning("report: cannot load %s's model: %s", candidate.name, exc)
                self._models[candidate.name] = exc
        loaded = self._models[candidate.name]
        if isinstance(loaded, Exception):
            raise loaded
        return loaded

    def answers(self) -> tuple[list[Answers], dict[str, str]]:
        """Every candidate's answers on its held-out rows, and why a candidate has none."""
        found: list[Answers] = []
        errors: dict[str, str] = {}
        for candidate in self.records.candidates:
            if candidate.name not in self._answers:
                try:
                    self._answers[candidate.name] = answers(self.records.config, candidate, self.model(candidate))
                except Exception as exc:
                    self._answers[candidate.name] = exc
            outcome = self._answers[candidate.name]
            if isinstance(outcome, Exception):
                errors[candidate.name] = f"{type(outcome).__name__}: {outcome}"
            else:
                found.append(outcome)
        return found, errors
