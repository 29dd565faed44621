"""The public datasets that installed packages ship: found, converted to plain CSV, and served over 127.0.0.1."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from mlpipeline.dev import public_datasets
from mlpipeline.dev.datasource import DataSourceServer
from mlpipeline.dev.localstack import LocalStack, Ports, StackError, variables_from_environment
from mlpipeline.tasks import decide_task

# name -> (rows, columns including the target, distinct target values)
EXPECTED = {
    "iris": (150, 5, 3),
    "wine": (178, 14, 3),
    "breast_cancer": (569, 31, 2),
    "diabetes": (442, 11, 214),
    "penguins": (344, 17, 3),
    "seattle_weather": (1461, 6, 5),
}


def test_every_dataset_is_installed_and_has_its_shape_target_and_task() -> None:
    assert list(public_datasets.DATASETS) == list(EXPECTED)
    for name, (rows, columns, distinct) in EXPECTED.items():
        dataset = public_datasets.get(name)
        assert dataset.available and all(path.is_file() for path in dataset.paths), name
        frame = dataset.frame()
        assert frame.shape == (rows, columns), name
        target = frame[dataset.target]
        assert target.notna().all() and target.nunique() == distinct, name
        numeric = pd.api.types.is_numeric_dtype(target)
        integral = bool(numeric and (target % 1 == 0).all())
        # The task the dataset is listed under is the one the pipeline's "auto" decides from its target.
        assert decide_task(numeric=numeric, integral=integral, distinct=distinct) == dataset.task, name


def test_sklearn_files_get_a_header_row_named_target_and_class_names() -> None:
    shipped = public_datasets.get("iris").paths[0].read_text().splitlines()
    assert shipped[0] == "150,4,setosa,versicolor,virginica"  # the odd header this module exists to fix
    lines = public_datasets.get("iris").csv_bytes().decode().splitlines()
    assert lines[0] == "sepal length (cm),sepal width (cm),petal length (cm),petal width (cm),species"
    # The same measurements, in the same order, with the class code replaced by its name.
    assert lines[1] == shipped[1].rsplit(",", 1)[0] + ",setosa"
    assert len(lines) == 151
    iris = public_datasets.get("iris").frame()
    assert sorted(iris["species"].unique()) == ["setosa", "versicolor", "virginica"]
    assert sorted(public_datasets.get("wine").frame()["cultivar"].unique()) == ["class_0", "class_1", "class_2"]
    cancer = public_datasets.get("breast_cancer").frame()["diagnosis"].value_counts().to_dict()
    assert cancer == {"benign": 357, "malignant": 212}


def test_diabetes_joins_the_two_unnamed_files_into_named_features_and_progression() -> None:
    dataset = public_datasets.get("diabetes")
    features_file, target_file = dataset.paths
    first_features = gzip.decompress(features_file.read_bytes()).decode().splitlines()[0].split()
    first_target = float(gzip.decompress(target_file.read_bytes()).decode().splitlines()[0])
    frame = dataset.frame()
    assert list(frame.columns) == ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6", "progression"]
    assert frame.iloc[0, :10].tolist() == [float(v) for v in first_features]  # unscaled, as shipped
    assert frame["progression"].iloc[0] == first_target
    assert frame["age"].dtype == "int64" and frame["bmi"].dtype == "float64"


def test_messy_files_are_served_exactly_as_their_packages_ship_them() -> None:
    for name in ("penguins", "seattle_weather"):
        dataset = public_datasets.get(name)
        assert dataset.csv_bytes() == dataset.paths[0].read_bytes()
    penguins = public_datasets.get("penguins").csv_bytes().decode()
    assert penguins.startswith("studyName,Sample Number,Species,Region,Island,Stage,Individual ID,")
    assert ",NA," in penguins and "Culmen Length (mm)" in penguins
    weather = public_datasets.get("seattle_weather").csv_bytes().decode().splitlines()
    assert weather[:2] == ["date,precipitation,temp_max,temp_min,wind,weather", "2012/01/01,0.0,12.8,5.0,4.7,drizzle"]


def test_an_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(public_datasets.UnknownDataset, match="no public dataset 'titanic'; there are: iris, wine"):
        public_datasets.get("titanic")


@pytest.fixture
def server() -> Iterator[DataSourceServer]:
    with DataSourceServer(rows=200, seed=7) as running:
        yield running


def test_the_data_source_serves_each_dataset_with_validators_and_a_list(server: DataSourceServer) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        listing = http.get("/datasets")
        assert listing.status_code == 200
        described = {entry["name"]: entry for entry in listing.json()["datasets"]}
        assert set(described) == set(EXPECTED)
        assert described["penguins"]["path"] == "/datasets/penguins.csv"
        assert described["penguins"]["target"] == "Species" and described["diabetes"]["task"] == "regression"
        for name, (rows, columns, _) in EXPECTED.items():
            response = http.get(f"/datasets/{name}.csv")
            assert response.status_code == 200, name
            assert response.headers["content-type"].startswith("text/csv")
            assert response.content == public_datasets.get(name).csv_bytes()
            assert pd.read_csv(io.BytesIO(response.content)).shape == (rows, columns)
            etag, modified = response.headers["etag"], response.headers["last-modified"]
            assert http.get(f"/datasets/{name}.csv", headers={"If-None-Match": etag}).status_code == 304
            assert http.get(f"/datasets/{name}.csv", headers={"If-Modified-Since": modified}).status_code == 304
        # The churn data's switches do not touch them: new churn content, same dataset and validators.
        iris_etag = http.get("/datasets/iris.csv").headers["etag"]
        server.bump_version()
        server.drift = True
        assert http.get("/datasets/iris.csv", headers={"If-None-Match": iris_etag}).status_code == 304
        missing = http.get("/datasets/titanic.csv")
        assert missing.status_code == 404 and "there are: iris" in missing.json()["error"]
        head = http.head("/datasets/wine.csv")
        assert head.status_code == 200 and head.content == b""
        # Injected failures apply to them as to any data request (a crawl's retries are tested on them too).
        server.fail_next(1, 503)
        assert http.get("/datasets/iris.csv").status_code == 503
        assert http.get("/datasets/iris.csv").status_code == 200
    paths = [request.path for request in server.requests]
    assert "/datasets/penguins.csv" in paths and "/datasets" in paths


def test_the_embedded_stack_points_the_pipeline_at_a_dataset_through_variables(tmp_path: Path) -> None:
    stack = LocalStack(root=tmp_path, ports=Ports(8080, 8000, 8765, 8025))
    assert stack.dataset_variables("churn") == {}
    assert stack.dataset_url("churn") == "http://127.0.0.1:8765/api/records"
    penguins = stack.dataset_variables("penguins")
    assert penguins == {
        "crawl_url": "http://127.0.0.1:8765/datasets/penguins.csv",
        "dataset_schema": '{"target": "Species"}',
        "registered_model_name": "penguins_classifier",
    }
    assert stack.dataset_variables("diabetes")["registered_model_name"] == "diabetes_regressor"
    with pytest.raises(StackError, match=r"no public dataset 'titanic'; there are: iris.* \(or churn, the default\)"):
        stack.dataset_variables("titanic")
    # What the environment sets wins over the stack's defaults and over a dataset's Variables, as in a deployment.
    environ = {
        "AIRFLOW_VAR_CRAWL_URL": "http://127.0.0.1:9/mine.csv",
        "AIRFLOW_VAR_DATASET_SCHEMA": '{"target": "label"}',
        "AIRFLOW_VAR_": "ignored",
        "AIRFLOW__CORE__EXECUTOR": "not a Variable",
    }
    assert variables_from_environment(environ) == {
        "crawl_url": "http://127.0.0.1:9/mine.csv",
        "dataset_schema": '{"target": "label"}',
    }
    stack.variables.update({**penguins, **variables_from_environment(environ)})
    env = stack.env()
    assert env["AIRFLOW_VAR_CRAWL_URL"] == "http://127.0.0.1:9/mine.csv"
    assert env["AIRFLOW_VAR_DATASET_SCHEMA"] == '{"target": "label"}'
    assert env["AIRFLOW_VAR_REGISTERED_MODEL_NAME"] == "penguins_classifier"
    assert env["AIRFLOW_VAR_DATA_DIR"] == str(tmp_path.resolve() / "data")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
