"""What a dataset looks like: its target, its feature columns and their types (:class:`DatasetSchema`), and the
schema of the demo's bundled churn data. Part of the configuration (``dataset_schema``); re-exported by
:mod:`mlpipeline.config`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ColumnType = Literal["numeric", "integer", "categorical", "boolean", "date"]


class ColumnSpec(BaseModel):
    """One declared input column of the dataset."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: ColumnType
    required: bool = Field(default=True, description="The column must exist in the source.")
    nullable: bool = Field(default=True, description="Missing values are allowed (and imputed).")
    min: float | None = Field(default=None, description="Smallest valid value (numeric/integer).")
    max: float | None = Field(default=None, description="Largest valid value (numeric/integer).")
    categories: list[str] | None = Field(default=None, description="Allowed values (categorical).")

    @model_validator(mode="after")
    def _bounds_make_sense(self) -> ColumnSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"column {self.name!r}: min {self.min} is greater than max {self.max}")
        if self.categories is not None and self.type != "categorical":
            raise ValueError(f"column {self.name!r}: categories are only valid for categorical columns")
        if (self.min is not None or self.max is not None) and self.type not in ("numeric", "integer"):
            raise ValueError(f"column {self.name!r}: min/max are only valid for numeric/integer columns")
        return self


class DatasetSchema(BaseModel):
    """What the data looks like: the target and the feature columns (declared, or inferred by the first run)."""

    model_config = ConfigDict(extra="forbid")

    target: str = Field(min_length=1, description="Name of the target column (a label or a number).")
    positive_label: str | None = Field(
        default=None,
        description="Binary tasks: the target value (as text) that counts as the positive class. Unset: 1 / true /"
        " yes if the target has it, else the rarer class (recorded with the run).",
    )
    id_column: str | None = Field(default=None, description="Optional record id; never used as a feature.")
    columns: list[ColumnSpec] | None = Field(
        default=None,
        min_length=1,
        description="Feature columns. Unset: inferred from the first run's snapshot and frozen (see the schema CLI).",
    )
    exclude: list[str] = Field(default_factory=list, description="Columns never used (neither inferred nor declared).")

    @model_validator(mode="after")
    def _names_are_unique(self) -> DatasetSchema:
        names = [c.name for c in self.columns or []]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate column names: {duplicates}")
        if self.target in names:
            raise ValueError(f"target {self.target!r} is also declared as a feature column")
        excluded = sorted(set(self.exclude) & {*names, self.target})
        if excluded:
            raise ValueError(f"excluded column(s) {excluded} are also the target or declared feature columns")
        return self

    @property
    def is_resolved(self) -> bool:
        """Whether the feature columns are known (declared, or filled in from an inferred schema)."""
        return self.columns is not None

    def resolved_columns(self) -> list[ColumnSpec]:
        if self.columns is None:
            raise ValueError("dataset_schema.columns is not resolved yet: the ETL infers it from the snapshot")
        return self.columns

    def columns_of_type(self, *types: ColumnType) -> list[str]:
        return [c.name for c in self.resolved_columns() if c.type in types]

    @property
    def feature_names(self) -> list[str]:
        return [c.name for c in self.resolved_columns()]


def default_schema() -> DatasetSchema:
    """Schema of the bundled customer-churn dataset (the demo's default source)."""
    return DatasetSchema(
        target="churned",
        positive_label="1",
        id_column="customer_id",
        columns=[
            ColumnSpec(name="age", type="integer", min=18, max=100),
            ColumnSpec(name="tenure_months", type="integer", min=0, max=600),
            ColumnSpec(name="monthly_charges", type="numeric", min=0, max=10_000),
            ColumnSpec(name="total_charges", type="numeric", min=0, max=1_000_000),
            ColumnSpec(name="support_tickets", type="integer", min=0, max=1_000),
            ColumnSpec(name="data_usage_gb", type="numeric", min=0, max=100_000),
            ColumnSpec(
                name="contract",
                type="categorical",
                categories=["month-to-month", "one_year", "two_year"],
            ),
            ColumnSpec(
                name="payment_method",
                type="categorical",
                categories=["credit_card", "bank_transfer", "electronic_check", "mailed_check"],
            ),
            ColumnSpec(name="internet_service", type="categorical", categories=["dsl", "fiber", "none"]),
            ColumnSpec(name="region", type="categorical", categories=["north", "south", "east", "west"]),
            ColumnSpec(name="paperless_billing", type="boolean"),
            ColumnSpec(name="signup_date", type="date"),
        ],
    )
