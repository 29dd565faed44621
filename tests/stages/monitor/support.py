"""The dataset schema of the monitor tests: the model factory's features, one of each kind."""

from __future__ import annotations

from mlpipeline.config import DatasetSchema
from tests.model_factory import TARGET

SCHEMA = DatasetSchema(
    target=TARGET,
    columns=[
        {"name": "tenure_months", "type": "integer"},
        {"name": "support_tickets", "type": "integer"},
        {"name": "monthly_charges", "type": "numeric"},
        {"name": "contract", "type": "categorical"},
        {"name": "region", "type": "categorical"},
        {"name": "paperless_billing", "type": "boolean"},
        {"name": "signup_date", "type": "date"},
    ],
)
