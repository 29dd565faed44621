"""The command line: ``python -m mlpipeline <command> ...`` (or the installed ``mlpipeline`` command).

Commands, one module each:

* ``run`` (:mod:`.run`): the whole pipeline once in this process, with a progress line per stage.
* ``status`` (:mod:`.status`): the champion and the last runs' decisions.
* ``report <data_dir>/runs/<run>`` (:mod:`.report`): a run's HTML report (``--open``: in the browser).
* ``schema <url> --target <column>`` (:mod:`.schema`): a source's inferred schema for the ``dataset_schema``
  Variable.

Each command is a subparser whose ``handler`` takes the parsed arguments and returns the exit code; add one with an
``add_<command>_command(commands)`` function registered in :func:`build_parser`. Exit codes: 0 done, 1 a stage
failed, 2 bad arguments or input (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from mlpipeline.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from mlpipeline.cli.report import add_report_command
from mlpipeline.cli.run import add_run_command
from mlpipeline.cli.schema import add_schema_command
from mlpipeline.cli.status import add_status_command

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "build_parser", "main"]


def build_parser(prog: str = "python -m mlpipeline") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="The ML pipeline's command line.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log what each step does (to stderr).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    add_run_command(commands)
    add_status_command(commands)
    add_report_command(commands)
    add_schema_command(commands)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m mlpipeline") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return int(args.handler(args))


def console_main() -> int:
    """The installed ``mlpipeline`` command."""
    return main(prog="mlpipeline")
