# The two commands: `make demo` (run the pipeline end to end on the embedded stack) and `make test`.
# Both create .venv and install from requirements.lock on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
# The MLflow tracking server's own environment (see requirements-mlflow.in): used by the production stack.
MLFLOW_VENV := .venv-mlflow
MLFLOW_STAMP := $(MLFLOW_VENV)/.installed

.PHONY: demo test bench bench-quick stack lint format lock clean clean-demo

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Python >= 3.10 is required, found " + sys.version)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --python $(BIN)/python --quiet -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	touch $(STAMP)

$(MLFLOW_STAMP): requirements-mlflow.lock $(STAMP)
	test -x $(MLFLOW_VENV)/bin/python || $(PYTHON) -m venv $(MLFLOW_VENV)
	$(BIN)/uv pip install --python $(MLFLOW_VENV)/bin/python --quiet -r requirements-mlflow.lock
	touch $(MLFLOW_STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

# Two pytest workers (TEST_WORKERS=0: one process): tests that share a stack stay on one worker (tests/conftest.py).
TEST_WORKERS ?= 2
test: $(STAMP) $(MLFLOW_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): bench/requirements.txt $(STAMP)
	$(BIN)/uv pip install --python $(BIN)/python --quiet -r bench/requirements.txt
	touch $(BENCH_STAMP)

# Benchmarks (bench/, results in BENCHMARKS.md): not tests, no timing asserts. BENCH_ARGS="--only etl" picks some.
bench: $(STAMP) $(MLFLOW_STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-quick: $(STAMP) $(MLFLOW_STAMP) $(BENCH_STAMP)
	$(BIN)/python bench/run.py --quick $(BENCH_ARGS)

# The production stack (docker-compose.yaml) as local processes against a given PostgreSQL and Redis:
#   POSTGRES_HOST/PORT/USER/PASSWORD, AIRFLOW_DB_NAME, MLFLOW_DB_NAME (databases must exist), REDIS_HOST/PORT/DB and
#   REDIS_PASSWORD (required, as in compose: the Redis must ask for it). The other secrets are generated once into
#   .stack/secrets.json (MLflow's admin and service account, Airflow's admin, Flower, the serving token, ...).
stack: $(STAMP) $(MLFLOW_STAMP)
	$(BIN)/python -m mlpipeline.dev.stack up

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Re-resolve the pinned lock from requirements.in (universal: valid for every Python >= 3.10).
lock:
	test -x $(BIN)/uv || (test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); $(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)")
	$(BIN)/uv pip compile --universal --python-version 3.10 requirements.in -o requirements.lock
	$(BIN)/uv pip compile --universal --python-version 3.10 requirements-mlflow.in -o requirements-mlflow.lock

clean-demo:
	rm -rf .demo data

clean: clean-demo
	rm -rf $(VENV) $(MLFLOW_VENV) .pytest_cache .ruff_cache .stack
