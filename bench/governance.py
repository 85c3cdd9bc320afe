"""RecordEvent with a 10-rule governance file loaded vs. without rules (issue 10).

The rules are the kind a real deployment has: four cover the bench's traffic and
pass (freeze windows that are not open now, one-time and recurring, in two time
zones), six cover products and environments the bench never writes (approval,
flow and concurrency rules). Passing rules are evaluated on every STARTED and every
single COMPLETED; the others cost the per-place cache lookup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

RULES = """
[[rule]]
name = "past-freeze"
kind = "freeze"
environment_types = ["production"]
start = 2020-12-20T00:00:00Z
end = 2021-01-04T00:00:00Z

[[rule]]
name = "nightly-maintenance"
kind = "freeze"
schedule = "0 2 * * *"
duration = "1m"
timezone = "Europe/Berlin"

[[rule]]
name = "sunday-window-us"
kind = "freeze"
products = ["svc-0*"]
schedule = "0 2 * * SUN"
duration = "1m"
timezone = "America/New_York"

[[rule]]
name = "future-freeze"
kind = "freeze"
environments = ["staging", "uat"]
start = 2999-01-01T00:00:00Z
end = 2999-01-02T00:00:00Z

[[rule]]
name = "eu-approval"
kind = "approval"
environments = ["prod-eu-*"]

[[rule]]
name = "payments-flow"
kind = "flow"
products = ["payments*"]
requires = ["staging"]
soak = "1h"

[[rule]]
name = "billing-one-at-a-time"
kind = "concurrency"
products = ["billing"]

[[rule]]
name = "checkout-approval"
kind = "approval"
products = ["checkout"]
environment_types = ["production"]
required_approvals = 2

[[rule]]
name = "live-flow"
kind = "flow"
environments = ["live-*"]
requires_types = ["staging"]

[[rule]]
name = "dr-concurrency"
kind = "concurrency"
mode = "report"
environments = ["dr-*"]
"""


def write_rules(directory: Path) -> Path:
    path = directory / "bench-rules.toml"
    path.write_text(RULES)
    return path


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean calls/s per variant and the ratio with rules / without; the same from CPU
    per call (without's / with's), which a busy shared machine disturbs far less."""
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for cell in cells:
        rates.setdefault(cell["variant"], []).append(cell["calls_per_s"])
        cpu.setdefault(cell["variant"], []).append(cell["cpu_us_per_call"])
    mean = {name: round(sum(v) / len(v), 1) for name, v in rates.items()}
    cpu_mean = {name: round(sum(v) / len(v), 1) for name, v in cpu.items()}
    baseline = mean.get("no rules") or 0.0
    with_rules = mean.get("10 rules") or 0.0
    cpu_base, cpu_rules = cpu_mean.get("no rules") or 0.0, cpu_mean.get("10 rules") or 0.0
    return {
        "cells": cells,
        "per_s": mean,
        "cpu_us_per_call": cpu_mean,
        "ratio": round(with_rules / baseline, 3) if baseline else None,
        "cpu_ratio": round(cpu_base / cpu_rules, 3) if cpu_rules else None,
    }
