"""The synthetic churn dataset: pinned output, so refactoring the generator cannot change what it produces."""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd
import pytest

from mlpipeline.dev.datasource import generate_churn_dataset

CLEAN = {"missing_rate": 0.0, "malformed_rate": 0.0, "duplicate_rate": 0.0}


def fingerprint(frame: pd.DataFrame) -> str:
    """A hash of every column's name, dtype and values (``str`` of a float is its exact shortest repr)."""
    digest = hashlib.sha256()
    for name in frame.columns:
        digest.update(f"{name}:{frame[name].dtype}\n".encode())
        digest.update("\x1f".join(map(str, frame[name].astype(object))).encode())
    return digest.hexdigest()[:16]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"rows": 3000, "seed": 11}, "dc67f7bea88e50ae"),
        ({"rows": 3000, "seed": 11, "drift": True}, "385d689453ac8026"),
        (
            {"rows": 2000, "seed": 9, "malformed_rate": 0.2, "missing_rate": 0.05, "duplicate_rate": 0.1},
            "09081671ec8c8a66",
        ),
        ({"rows": 1000, "seed": 3, **CLEAN}, "cbf6d0faf3a26ed5"),
        ({"rows": 1}, "065a959c52caae04"),
        ({"rows": 0}, "e45c483e9e0b4bcf"),
    ],
)
def test_output_is_pinned_for_a_fixed_seed(arguments: dict[str, Any], expected: str) -> None:
    # Any change to the order of random draws, a formula or a dtype changes this hash: a deliberate change of the
    # data must update the pins (and say so in its commit), an accidental one fails here.
    assert fingerprint(generate_churn_dataset(**arguments)) == expected
