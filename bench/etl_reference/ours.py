"""Our ETL stage on a raw CSV snapshot, in a fresh data directory and run.

python ours.py RAW.csv OUT_DIR [--profile TOP]   # --profile: cProfile it, report the TOP functions too
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
import uuid

from _common import report

from mlpipeline.config import build_config
from mlpipeline.stages.etl import etl


def main(source: str, out_dir: str, profile_top: int = 0) -> None:
    config = build_config({"data_dir": out_dir})
    profiler = cProfile.Profile() if profile_top else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    result = etl(config, run=f"bench-{uuid.uuid4().hex[:8]}", raw_data_path=source, raw_format="csv")
    if profiler is None:
        report(started, rows_out=result.rows_out, rows_quarantined=result.rows_quarantined)
        return
    profiler.disable()
    table = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, ..., own seconds, cumulative seconds)
    top = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:profile_top]
    functions = [
        {"function": f"{file.rsplit('/', 1)[-1]}:{name}", "calls": calls, "own_seconds": round(own, 3)}
        for (file, _line, name), (_primitive, calls, own, _cumulative, _callers) in top
    ]
    report(started, rows_out=result.rows_out, top=functions, total_profiled=round(sum(v[2] for v in table.values()), 3))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--profile" else 0)
