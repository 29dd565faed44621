"""The command line: ``python -m mlpipeline <command> ...``.

Commands:

* ``schema <url> --target <column>``: crawl the source once into a temporary directory, infer its dataset schema
  (:func:`mlpipeline.stages.schema.infer_schema`) and print it on stdout as the JSON the ``dataset_schema``
  Variable takes; the columns left out, each with its reason, go to stderr.
* ``report <data_dir>/runs/<run>``: write the run's HTML report (:func:`mlpipeline.stages.report.build_report`:
  decision, candidates, curves, importance, data profile, drift) and print where it is.

Each command is a subparser whose ``handler`` takes the parsed arguments and returns the exit code; add one with
an ``add_<command>_command(commands)`` function registered in :func:`build_parser`. Exit codes: 0 done, 2 bad
arguments or input (one line on stderr saying why).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from mlpipeline.config import ConfigError, SourceFormat, build_config, read_config
from mlpipeline.stages.crawl import CrawlError, crawl
from mlpipeline.stages.schema import DEFAULT_SAMPLE_ROWS, SchemaError, infer_schema, schema_json
from mlpipeline.storage import run_key

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # argparse's own code for bad arguments: one code for "what you gave me does not work"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlpipeline", description="The ML pipeline's command line.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log what each step does (to stderr).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    add_schema_command(commands)
    add_report_command(commands)
    return parser


def add_schema_command(commands: argparse._SubParsersAction) -> None:
    schema = commands.add_parser(
        "schema",
        help="Infer a source's dataset schema and print it as JSON for the dataset_schema Variable.",
        description="Crawl the URL once (into a temporary directory), infer the feature columns and their types from"
        " its first rows, print the schema as JSON for the dataset_schema Variable on stdout and the columns left"
        " out, with the reason for each, on stderr.",
    )
    schema.add_argument("url", help="HTTP(S) URL of the source data.")
    schema.add_argument("--target", required=True, help="The target column.")
    schema.add_argument("--id-column", default=None, help="A record id column (never a feature).")
    schema.add_argument("--exclude", default="", help="Columns never to use, separated by commas.")
    schema.add_argument("--positive-label", default=None, help="Binary targets: the value that is the positive class.")
    schema.add_argument(
        "--format",
        default="auto",
        choices=get_args(SourceFormat),
        help="The source's format (default: auto, from the Content-Type or the URL).",
    )
    schema.add_argument(
        "--sample-rows",
        type=int,
        default=DEFAULT_SAMPLE_ROWS,
        help=f"Infer from this many first rows (default {DEFAULT_SAMPLE_ROWS}).",
    )
    schema.set_defaults(handler=schema_command)


def schema_command(args: argparse.Namespace) -> int:
    exclude = [name.strip() for name in args.exclude.split(",") if name.strip()]
    if args.sample_rows < 1:
        return _refuse(f"--sample-rows must be at least 1, got {args.sample_rows}")
    with tempfile.TemporaryDirectory(prefix="mlpipeline-schema-") as data_dir:
        try:
            config = build_config({"crawl_url": args.url, "data_dir": data_dir, "crawl_format": args.format})
            crawled = crawl(config, run_key("schema"))
            schema, excluded = infer_schema(
                crawled.data_path,
                crawled.format,
                target=args.target,
                id_column=args.id_column,
                exclude=exclude,
                positive_label=args.positive_label,
                sample_rows=args.sample_rows,
            )
        except (ConfigError, CrawlError, SchemaError) as exc:
            return _refuse(str(exc))
    print(json.dumps(schema_json(schema), indent=2))
    if excluded:
        print("left out:", file=sys.stderr)
        for name, reason in excluded.items():
            print(f"  {name}: {reason}", file=sys.stderr)
    return EXIT_OK


def add_report_command(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="Write a run's HTML report and print its path.",
        description="Read what a pipeline run left under <data_dir>/runs/<run>/ (its frozen config, decision, models,"
        " data profile, drift) and write one self-contained HTML report with plots; print where it is.",
    )
    report.add_argument("records", help="The run's records directory, <data_dir>/runs/<run>/.")
    report.add_argument("--out", default=None, help="Where to write the HTML (default: <records>/report.html).")
    report.set_defaults(handler=report_command)


def report_command(args: argparse.Namespace) -> int:
    from mlpipeline.stages.report import build_report  # matplotlib: only for this command

    records = Path(args.records)
    frozen = [records / name for name in ("config.resolved.json", "config.json") if (records / name).is_file()]
    if not frozen:
        return _refuse(f"{records} holds no config.resolved.json or config.json: not a run's records directory")
    try:
        config = read_config(str(frozen[0]))
        # The records directory says where the run's data is, wherever the command runs from.
        config = config.model_copy(update={"data_dir": str(records.resolve().parent.parent)})
        path = build_report(config, run=records.resolve().name, out_path=Path(args.out) if args.out else None)
    except (ConfigError, OSError) as exc:
        return _refuse(str(exc))
    print(path)
    return EXIT_OK


def _refuse(message: str) -> int:
    print("error: " + " ".join(message.split()), file=sys.stderr)  # one line, whatever the message holds
    return EXIT_BAD_INPUT


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
