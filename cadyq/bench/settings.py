"""Benchmark settings, the error type and latency statistics."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import CadyqError
from ..tiling import check_step

PERCENTILES = (90, 95, 99)
SCHEDULES = ("interleaved", "sequential")

class BenchError(CadyqError):
    """Invalid benchmark settings."""


@dataclass
class BenchSettings:
    tile: int = 96
    overlap: int = 6
    batch: int = 16
    warmup: int = 3
    iterations: int | None = 20  # None: run for `duration` seconds per configuration
    duration: float | None = None
    image_runs: int = 1
    seed: int = 0
    schedule: str = "interleaved"  # or "sequential": each configuration's iterations in one block

    def validate(self) -> None:
        if self.iterations is not None and self.duration is not None:
            raise BenchError("give --iterations or --duration, not both")
        if self.iterations is None and self.duration is None:
            raise BenchError("give --iterations N or --duration S")
        if self.iterations is not None and self.iterations < 1:
            raise BenchError(f"--iterations must be at least 1, got {self.iterations}")
        if self.duration is not None and not (self.duration > 0 and math.isfinite(self.duration)):
            raise BenchError(f"--duration must be a positive number of seconds, got {self.duration}")
        if self.warmup < 0:
            raise BenchError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.batch < 1:
            raise BenchError(f"--batch must be at least 1, got {self.batch}")
        if self.tile < 4:
            raise BenchError(f"--tile must be at least 4 px, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise BenchError(f"--overlap must be in 0..tile-1, got {self.overlap}")
        check_step(self.tile, self.overlap)
        if self.schedule not in SCHEDULES:
            raise BenchError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.image_runs < 1:
            raise BenchError(f"--image-runs must be at least 1, got {self.image_runs}")



# ---- statistics --------------------------------------------------------------------------------------
def latency_stats(times_ms) -> dict[str, float]:
    """min/mean/median/p90/p95/p99/max/std (ms) and the coefficient of variation of a list of times."""
    a = np.asarray(list(times_ms), dtype=np.float64)
    if a.size == 0:
        raise BenchError("no timed iterations")
    out = {"min": float(a.min()), "mean": float(a.mean()), "median": float(np.median(a))}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(a, p))
    out["max"] = float(a.max())
    out["std"] = float(a.std())
    out["cov"] = float(a.std() / a.mean()) if a.mean() > 0 else 0.0
    return out
