"""The one clock: microseconds since the Unix epoch, UTC (see model.py)."""

from __future__ import annotations

import time


def now_us() -> int:
    return time.time_ns() // 1000
