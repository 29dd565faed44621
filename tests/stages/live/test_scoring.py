"""The live score replays the endpoint's logged answers through the training metrics, for every task: binary
(0/1 answers; actuals as 0/1 or the source's positive label), multiclass (text labels, a probability per class)
and regression; answers logged without probabilities still give the label metrics."""

from __future__ import annotations

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, r2_score, roc_auc_score

from mlpipeline.stages.live.scoring import live_score


def _outcomes(prediction: list, probabilities: list, actual: list) -> pd.DataFrame:
    return pd.DataFrame({"prediction": prediction, "probabilities": probabilities, "actual": actual})


def test_binary_scores_match_sklearn_and_source_labels_map_to_the_positive_class() -> None:
    predicted, p = [1, 0, 1, 1, 0, 0], [0.9, 0.2, 0.6, 0.7, 0.4, 0.1]
    actual = ["yes", "no", "no", "yes", "yes", "no"]  # as the source names them; "yes" is the positive class
    score = live_score(_outcomes(predicted, p, actual), task="binary", metric="roc_auc", classes=[0, 1],
                       positive_label="yes")  # fmt: skip
    truth = [1, 0, 0, 1, 1, 0]
    assert score.rows == 6 and score.notes == ()
    assert score.metrics["accuracy"] == pytest.approx(accuracy_score(truth, predicted), abs=1e-6)
    assert score.score == pytest.approx(roc_auc_score(truth, p), abs=1e-6)
    assert score.metrics["log_loss"] == pytest.approx(log_loss(truth, p), abs=1e-6)


def test_multiclass_uses_each_class_probability() -> None:
    classes = ["Adelie", "Chinstrap", "Gentoo"]
    rows = [
        ("Adelie", {"Adelie": 0.8, "Chinstrap": 0.1, "Gentoo": 0.1}, "Adelie"),
        ("Gentoo", {"Adelie": 0.1, "Chinstrap": 0.2, "Gentoo": 0.7}, "Chinstrap"),
        ("Chinstrap", {"Adelie": 0.2, "Chinstrap": 0.6, "Gentoo": 0.2}, "Chinstrap"),
        ("Gentoo", {"Adelie": 0.1, "Chinstrap": 0.1, "Gentoo": 0.8}, "Gentoo"),
    ]
    outcomes = _outcomes(*map(list, zip(*rows, strict=True)))
    score = live_score(outcomes, task="multiclass", metric="log_loss", classes=classes, positive_label=None)
    matrix = [[row[1][c] for c in classes] for row in rows]
    assert score.metrics["accuracy"] == pytest.approx(0.75)
    assert score.score == pytest.approx(log_loss([row[2] for row in rows], matrix, labels=classes), abs=1e-6)


def test_regression_leaves_out_unusable_actuals_and_says_so() -> None:
    outcomes = _outcomes([1.0, 2.0, 3.0, 4.0], [None] * 4, [1.5, 2.0, None, 3.0])
    score = live_score(outcomes, task="regression", metric="mae", classes=[], positive_label=None)
    assert score.rows == 3 and "1 feedback row(s)" in score.notes[0]
    assert score.score == pytest.approx(mean_absolute_error([1.5, 2.0, 3.0], [1.0, 2.0, 4.0]), abs=1e-6)
    assert score.metrics["r2"] == pytest.approx(r2_score([1.5, 2.0, 3.0], [1.0, 2.0, 4.0]), abs=1e-6)


def test_answers_without_probabilities_give_the_label_metrics_only() -> None:
    outcomes = _outcomes([1, 0, 1, 0], [0.9, None, 0.8, 0.1], [1, 0, 0, 0])
    score = live_score(outcomes, task="binary", metric="accuracy", classes=[0, 1], positive_label="1")
    assert score.score == pytest.approx(0.75)
    assert "roc_auc" not in score.metrics and "log_loss" not in score.metrics
    assert any("without probabilities" in note for note in score.notes)
