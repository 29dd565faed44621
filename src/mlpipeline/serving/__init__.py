"""The model server: FastAPI app serving the registry's champion, with hot swap (``python -m mlpipeline.serving``)."""

from mlpipeline.serving.app import *  # noqa: F403  # transitional; replaced by explicit exports below
