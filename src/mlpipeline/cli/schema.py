"""``schema <url> --target <column>``: crawl a source once into a temporary directory, infer its dataset schema
(:func:`mlpipeline.stages.schema.infer_schema`) and print it on stdout as the JSON the ``dataset_schema`` Variable
takes; the columns left out, each with its reason, go to stderr."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from typing import get_args

from mlpipeline.cli.common import EXIT_OK, refuse
from mlpipeline.config import ConfigError, SourceFormat, build_config
from mlpipeline.stages.crawl import CrawlError, crawl
from mlpipeline.stages.schema import DEFAULT_SAMPLE_ROWS, SchemaError, infer_schema, schema_json
from mlpipeline.storage import run_key


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
        return refuse(f"--sample-rows must be at least 1, got {args.sample_rows}")
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
            return refuse(str(exc))
    print(json.dumps(schema_json(schema), indent=2))
    if excluded:
        print("left out:", file=sys.stderr)
        for name, reason in excluded.items():
            print(f"  {name}: {reason}", file=sys.stderr)
    return EXIT_OK
