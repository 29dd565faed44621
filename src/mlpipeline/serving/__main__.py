"""``python -m mlpipeline.serving``: run the model server."""

from mlpipeline.serving.app import main

raise SystemExit(main())
