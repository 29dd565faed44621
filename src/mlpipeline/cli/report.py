"""``report <data_dir>/runs/<run> [--open]``: write the run's HTML report
(:func:`mlpipeline.stages.report.build_report`: decision, candidates, curves, importance, data profile, drift), print
where it is and, with ``--open``, show it in the web browser."""

from __future__ import annotations

import argparse
import sys
import webbrowser
from pathlib import Path

from mlpipeline.cli.common import EXIT_OK, refuse
from mlpipeline.config import ConfigError, read_config


def add_report_command(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="Write a run's HTML report and print its path.",
        description="Read what a pipeline run left under <data_dir>/runs/<run>/ (its frozen config, decision, models,"
        " data profile, drift) and write one self-contained HTML report with plots; print where it is.",
    )
    report.add_argument("records", help="The run's records directory, <data_dir>/runs/<run>/.")
    report.add_argument("--out", default=None, help="Where to write the HTML (default: <records>/report.html).")
    report.add_argument("--open", action="store_true", help="Open the report in the web browser once written.")
    report.set_defaults(handler=report_command)


def report_command(args: argparse.Namespace) -> int:
    records = Path(args.records)
    try:
        path = write_run_report(records, Path(args.out) if args.out else None)
    except (ConfigError, OSError) as exc:
        return refuse(str(exc))
    print(path)
    if args.open:
        open_in_browser(path)
    return EXIT_OK


def write_run_report(records: Path, out_path: Path | None = None) -> Path:
    """Build the report of the run whose records are in ``records`` (ConfigError if that is not a run's)."""
    from mlpipeline.stages.report import build_report  # matplotlib: only when a report is written

    frozen = [records / name for name in ("config.resolved.json", "config.json") if (records / name).is_file()]
    if not frozen:
        raise ConfigError(f"{records} holds no config.resolved.json or config.json: not a run's records directory")
    config = read_config(str(frozen[0]))
    # The records directory says where the run's data is, wherever the command runs from.
    config = config.model_copy(update={"data_dir": str(records.resolve().parent.parent)})
    return build_report(config, run=records.resolve().name, out_path=out_path)


def open_in_browser(path: Path) -> None:
    if not webbrowser.open(path.resolve().as_uri()):
        print(f"no web browser could be started here; open {path} yourself", file=sys.stderr)
