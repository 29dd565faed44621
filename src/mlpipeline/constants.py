"""Names and tokens shared by the stages, the model server and the configuration: one home, no copies."""

from __future__ import annotations

# Text a boolean cell or request value may hold (compared lower-cased, stripped).
TRUE_TOKENS = frozenset({"true", "1", "yes", "y", "t"})
FALSE_TOKENS = frozenset({"false", "0", "no", "n", "f"})

# The registry names the pipeline and the model server use unless configured otherwise.
DEFAULT_MODEL_NAME = "churn_classifier"
DEFAULT_ALIAS = "champion"

# The model server's bearer token for POST /reload, which deploy sends: a secret, read from the environment only
# (.env in a deployment), never a command-line option, the run's config or a log.
SERVING_TOKEN_ENV = "MLPIPELINE_SERVING_TOKEN"
