"""``python -m mlpipeline.serving``: run the model server."""

from mlpipeline.serving.cli import main

if __name__ == "__main__":  # guarded: a spawned child process (the prediction log's writer) may import this module
    raise SystemExit(main())
