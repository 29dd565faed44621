"""``python -m mlpipeline.serving``: run the model server."""

from mlpipeline.serving.cli import main

raise SystemExit(main())
