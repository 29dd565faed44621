"""``python -m mlpipeline <command> ...``: the command line (:mod:`mlpipeline.cli`; ``run``, ``status``,
``report``, ``schema``)."""

from __future__ import annotations

import sys

from mlpipeline.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, build_parser, main

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
