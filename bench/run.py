"""Run the benchmarks and rewrite their sections of BENCHMARKS.md.

    python bench/run.py            # everything, full sizes (make bench)
    python bench/run.py --quick    # smaller sizes and fewer repeats, under 10 minutes (make bench-quick)
    python bench/run.py --only etl,serving
    python bench/run.py --render --only stack   # rewrite the tables from bench/results/ without measuring

Each benchmark is ``bench/bench_<name>.py`` with ``run(quick: bool)`` returning its Section(s); ``stack`` (on
the Celery stack) writes two: orchestration and scale-out.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

# One OpenMP thread, as the stack's services run (compose sets it): on a shared 2-core machine spinning OpenMP
# threads make scikit-learn many times slower and the numbers meaningless.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # tests.services: the integration servers

from common import RESULTS_DIR, update_benchmarks_md, write_result

BENCHMARKS = ("training", "etl", "serving", "stack")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (< 10 minutes)")
    parser.add_argument("--render", action="store_true", help="re-write the tables from the saved results only")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(BENCHMARKS)
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")

    if args.render:
        for name in chosen:
            module = importlib.import_module(f"bench_{name}")
            render_saved = getattr(module, "render_saved", None)
            if render_saved is None:  # its tables need the live run's objects: only a run writes them
                print(f"== {name}: no --render (run it to re-write its tables)", flush=True)
                continue
            saved = {path.stem: json.loads(path.read_text()) for path in RESULTS_DIR.glob("*.json")}
            for section in render_saved(saved):
                result = saved[section.name]
                update_benchmarks_md(section, quick=result["quick"], facts=result["machine"])
                print(section.markdown, flush=True)
        return 0
    failed = []
    total_started = time.monotonic()
    for name in chosen:
        started = time.monotonic()
        print(f"== {name} ({'quick' if args.quick else 'full'})", flush=True)
        try:
            produced = importlib.import_module(f"bench_{name}").run(quick=args.quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        for section in produced if isinstance(produced, list) else [produced]:
            write_result(section, quick=args.quick)
            update_benchmarks_md(section, quick=args.quick)
            print(section.markdown, flush=True)
        print(f"== {name} done in {time.monotonic() - started:.0f} s", flush=True)
    print(f"== all done in {(time.monotonic() - total_started) / 60:.1f} min", flush=True)
    if failed:
        print(f"benchmark(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
