"""Percentiles and ratios."""

from __future__ import annotations

from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[rank])


def latency_summary(latencies_us: list[int]) -> dict[str, float]:
    values = sorted(latencies_us)
    return {
        "p50_ms": round(percentile(values, 50) / 1000, 3),
        "p99_ms": round(percentile(values, 99) / 1000, 3),
        "max_ms": round(values[-1] / 1000, 3) if values else 0.0,
        "samples": len(values),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)
