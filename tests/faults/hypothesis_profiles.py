"""Hypothesis profiles: `ci` (the default, keeps the suite fast) and `long` for local runs.

    make test PYTEST_ARGS="tests/faults/test_fuzz.py --hypothesis-profile long"

Registered from tests/conftest.py, before the hypothesis plugin reads the option.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]
# Real RPCs on a shared machine: no per-example time limit (deadline=None).
settings.register_profile(
    "ci", max_examples=40, deadline=None, suppress_health_check=_SLOW, print_blob=True
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=_SLOW, print_blob=True
)
settings.load_profile("ci")
