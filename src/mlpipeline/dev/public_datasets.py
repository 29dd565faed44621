"""Public datasets that ship inside installed Python packages, as plain CSV files the pipeline can crawl.

The bundled data source serves each one at ``/datasets/<name>.csv`` (see :mod:`mlpipeline.dev.datasource`), so
the demo and the tests can run the pipeline on real data of every task kind without a network:

=================  ==========  ================  ========================================================
name               task        target            source
=================  ==========  ================  ========================================================
iris               multiclass  species           scikit-learn ``sklearn/datasets/data/iris.csv``
wine               multiclass  cultivar          scikit-learn ``sklearn/datasets/data/wine_data.csv``
breast_cancer      binary      diagnosis         scikit-learn ``sklearn/datasets/data/breast_cancer.csv``
diabetes           regression  progression       scikit-learn ``diabetes_data_raw.csv.gz`` + ``diabetes_target.csv.gz``
penguins           multiclass  Species           palmerpenguins ``palmerpenguins/data/penguins-raw.csv``
seattle_weather    multiclass  weather           vega_datasets ``vega_datasets/_data/seattle-weather.csv``
=================  ==========  ================  ========================================================

scikit-learn's files are not plain CSVs: their first row is ``n_samples, n_features, class names...`` (iris.csv
starts ``150,4,setosa,versicolor,virginica``), the class is a code in the last column and the diabetes features and
target are separate space-separated files without names. They are read with scikit-learn's own loaders (which know
the feature names) and written back as a CSV with a header row and the target column named and labelled (iris'
species are ``setosa``..., not 0/1/2). The two others are served byte for byte as their packages ship them: real,
messy files (penguins-raw has names like ``Culmen Length (mm)``, ``NA`` strings, dates and free-text comments;
seattle-weather has dates written ``2012/01/01``).

``python -m mlpipeline.dev.public_datasets`` lists them and whether their package is installed here.
"""

from __future__ import annotations

import functools
import importlib.resources
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlpipeline.tasks import Task

DATASETS_PATH = "/datasets"  # the data source's URL prefix: /datasets/<name>.csv


class UnknownDataset(KeyError):
    """No public dataset of that name; the message lists the names there are."""

    def __str__(self) -> str:  # KeyError's own str() would show the message quoted
        return str(self.args[0])


@dataclass(frozen=True)
class PublicDataset:
    """One dataset: where it comes from, its target and task, and how to turn it into plain CSV bytes."""

    name: str
    target: str
    task: Task
    package: str  # the importable package that ships the file(s)
    files: tuple[str, ...]  # paths inside that package
    description: str
    _convert: Callable[[], bytes] | None = None  # None: the (single) file is served as it is

    @property
    def url_path(self) -> str:
        return f"{DATASETS_PATH}/{self.name}.csv"

    @property
    def available(self) -> bool:
        """Whether the package that ships it is installed."""
        return importlib.util.find_spec(self.package) is not None

    @property
    def paths(self) -> list[Path]:
        """The shipped files on this machine."""
        root = importlib.resources.files(self.package)
        return [Path(str(root.joinpath(*file.split("/")))) for file in self.files]

    def csv_bytes(self) -> bytes:
        """The dataset as a CSV with a header row (computed once per process)."""
        return _csv_bytes(self.name)

    def frame(self) -> pd.DataFrame:
        """The CSV read with pandas' defaults (``NA`` strings become missing values)."""
        import io

        return pd.read_csv(io.BytesIO(self.csv_bytes()))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.url_path,
            "target": self.target,
            "task": self.task,
            "source": f"{self.package}: {', '.join(self.files)}",
            "description": self.description,
            "available": self.available,
        }


def _sklearn_frame(loader_name: str, target: str, **options: Any) -> bytes:
    """A scikit-learn bundled dataset as CSV: real feature names, the target named, class codes as their names."""
    from sklearn import datasets

    bunch = getattr(datasets, loader_name)(as_frame=True, **options)
    frame = bunch.frame.rename(columns={"target": target})
    names = getattr(bunch, "target_names", None)
    if names is not None:  # a classification: the class code indexes target_names
        frame[target] = [str(names[code]) for code in frame[target]]
    for column in frame.columns:
        values = frame[column]
        if values.dtype.kind == "f" and values.notna().all() and (values % 1 == 0).all():
            frame[column] = values.astype("int64")  # 59, not 59.0: counts and codes read as a person wrote them
    return frame.to_csv(index=False).encode()


DATASETS: dict[str, PublicDataset] = {
    d.name: d
    for d in (
        PublicDataset(
            "iris",
            "species",
            "multiclass",
            "sklearn",
            ("datasets/data/iris.csv",),
            "Fisher's iris flowers: 150 rows, 4 measurements, 3 species.",
            lambda: _sklearn_frame("load_iris", "species"),
        ),
        PublicDataset(
            "wine",
            "cultivar",
            "multiclass",
            "sklearn",
            ("datasets/data/wine_data.csv",),
            "Wines from three cultivars: 178 rows, 13 chemical measurements.",
            lambda: _sklearn_frame("load_wine", "cultivar"),
        ),
        PublicDataset(
            "breast_cancer",
            "diagnosis",
            "binary",
            "sklearn",
            ("datasets/data/breast_cancer.csv",),
            "Breast cancer (Wisconsin diagnostic): 569 rows, 30 cell-nucleus features, malignant or benign.",
            lambda: _sklearn_frame("load_breast_cancer", "diagnosis"),
        ),
        PublicDataset(
            "diabetes",
            "progression",
            "regression",
            "sklearn",
            ("datasets/data/diabetes_data_raw.csv.gz", "datasets/data/diabetes_target.csv.gz"),
            "Diabetes: 442 patients, 10 unscaled baseline measurements, disease progression after a year.",
            lambda: _sklearn_frame("load_diabetes", "progression", scaled=False),
        ),
        PublicDataset(
            "penguins",
            "Species",
            "multiclass",
            "palmerpenguins",
            ("data/penguins-raw.csv",),
            "Palmer penguins, raw: 344 rows, 17 columns as recorded (ids, dates, NA, comments), 3 species.",
        ),
        PublicDataset(
            "seattle_weather",
            "weather",
            "multiclass",
            "vega_datasets",
            ("_data/seattle-weather.csv",),
            "Seattle daily weather 2012-2015: 1461 rows, date, precipitation, temperatures, wind; 5 kinds of weather.",
        ),
    )
}


def get(name: str) -> PublicDataset:
    """The dataset called ``name``; raises :class:`UnknownDataset` naming the ones there are."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownDataset(f"no public dataset {name!r}; there are: {', '.join(DATASETS)}") from None


@functools.cache
def _csv_bytes(name: str) -> bytes:
    dataset = get(name)
    if not dataset.available:
        raise FileNotFoundError(f"dataset {name!r} needs the {dataset.package!r} package, which is not installed")
    if dataset._convert is not None:
        return dataset._convert()
    return dataset.paths[0].read_bytes()


def main() -> int:
    for dataset in DATASETS.values():
        info = dataset.describe()
        state = "" if info["available"] else "  (not installed)"
        print(f"{info['name']:<16} {info['task']:<11} target {info['target']!r:<14} {info['source']}{state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
