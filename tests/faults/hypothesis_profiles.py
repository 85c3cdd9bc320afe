"""Hypothesis profiles: `ci` (the default, keeps the suite fast) and `long` for local runs.

    make test PYTEST_ARGS="tests/faults/test_fuzz.py --hypothesis-profile long"

Registered from tests/conftest.py, before the hypothesis plugin reads the option.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_COMMON = {
    "deadline": None,  # real RPCs on a shared machine: no per-example time limit
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=40, **_COMMON)
settings.register_profile("long", max_examples=2000, **_COMMON)
settings.load_profile("ci")
