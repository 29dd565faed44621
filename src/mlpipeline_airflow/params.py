"""The trigger form of ``ml_pipeline``: one Airflow ``Param`` per setting a run may change, generated from the
configuration's own JSON schema (types, bounds, choices, descriptions), so the form validates what ``start``
would and never drifts from :class:`mlpipeline.config.PipelineConfig`.

Every field defaults to empty (``null``): an empty field means "use the Variable" (``start`` drops empty values
before it applies the run's conf), so a run triggered from the form without changes is a scheduled run.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param

from mlpipeline.config import FIELD_NAMES, RUN_OVERRIDABLE_FIELDS, PipelineConfig

# Form sections, in the order the form shows them.
SECTIONS: dict[str, tuple[str, ...]] = {
    "The model": ("task", "ml_model_type", "hyperparameters", "candidates", "test_size", "random_state"),
    "Judging it": ("validation_metric", "metric_threshold", "champion_tolerance", "champion_margin"),
    "Data checks": ("max_bad_row_fraction", "min_rows", "drift_psi_threshold", "drift_ks_pvalue"),
}
# JSON-schema keywords a form field keeps (the rest — titles, $refs, pydantic's defaults — is ours to set).
_KEPT = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "maxItems", "minItems")

# How the trigger form shows the empty choice of a list of choices (the run takes the Variable's value).
EMPTY_CHOICE = "(the Variable's value)"


def _field_schema(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    """One field's JSON schema as a nullable form field: ``anyOf [X, null]`` flattened, enums keep ``None``."""
    spec = schema["properties"][name]
    choices = [s for s in spec.get("anyOf", [spec]) if s.get("type") != "null"]
    field = choices[0]
    kinds = field.get("type", "object")
    out: dict[str, Any] = {key: field[key] for key in _KEPT if key in field}
    out["type"] = ["null", *([kinds] if isinstance(kinds, str) else kinds)]
    if "enum" in field:
        out["enum"] = [None, *field["enum"]]
        # The form labels a choice by values_display[String(value)]: without this the empty choice reads "null".
        out["values_display"] = {"null": EMPTY_CHOICE}
    if "$ref" in field or kinds == "array":
        out["type"] = ["null", "array" if kinds == "array" else "object"]
    return out


def run_params() -> dict[str, Param]:
    """The form: every run-changeable setting (by its current name, not an old alias), empty by default."""
    schema = PipelineConfig.model_json_schema()
    names = [name for name in FIELD_NAMES if name in RUN_OVERRIDABLE_FIELDS]
    section_of = {name: section for section, members in SECTIONS.items() for name in members}
    missing = sorted(set(names) - set(section_of))
    if missing:  # a new run-changeable setting must be placed in the form on purpose
        raise ValueError(f"run-changeable settings without a form section: {missing}")
    return {
        name: Param(
            None,
            title=name,
            description=(schema["properties"][name].get("description") or "")
            + " Empty: the Airflow Variable (or the default).",
            section=section_of[name],
            **_field_schema(name, schema),
        )
        for section in SECTIONS
        for name in names
        if section_of[name] == section
    }


def without_empty(conf: dict[str, Any]) -> dict[str, Any]:
    """A run's conf without the form's empty fields (``None``: use the Variable)."""
    return {name: value for name, value in conf.items() if value is not None}
