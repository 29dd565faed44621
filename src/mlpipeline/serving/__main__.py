"""``python -m mlpipeline.serving``: run the model server."""

from mlpipeline.serving.cli import main

if __name__ == "__main__":  # guarded: importing the module (e.g. to find its path) must not start a server
    raise SystemExit(main())
