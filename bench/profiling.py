"""``BENCH_PROFILE=DIR``: workers run their measured part under cProfile and save it in DIR.

The profiler's clock is CPU time, not wall time: on a shared machine the wall clock also counts the
time other processes had the CPU. Read a profile with ``python -m pstats DIR/NAME.prof``.
"""

from __future__ import annotations

import cProfile
import os
import time
from pathlib import Path


def start() -> cProfile.Profile | None:
    if not os.environ.get("BENCH_PROFILE"):
        return None
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    return profiler


def save(profiler: cProfile.Profile | None, name: str) -> None:
    if profiler is None:
        return
    profiler.disable()
    directory = Path(os.environ["BENCH_PROFILE"])
    directory.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(directory / f"{name}.prof")
