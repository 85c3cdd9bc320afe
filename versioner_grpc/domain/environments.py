"""Environment type inference from the environment's name."""

from __future__ import annotations

import re

from versioner_grpc.domain.model import EnvironmentType

# Checked in this order; the first type with a matching word wins, so
# "prod-qa" is PRODUCTION (a production-like name is the safer reading).
_WORDS: list[tuple[EnvironmentType, frozenset[str]]] = [
    (EnvironmentType.PRODUCTION, frozenset({"prod", "production", "live"})),
    (EnvironmentType.STAGING, frozenset({"staging", "stage", "uat", "preprod"})),
    (EnvironmentType.TEST, frozenset({"test", "qa", "integration"})),
    (EnvironmentType.DEVELOPMENT, frozenset({"dev", "development", "local", "sandbox"})),
]
# "pre-prod", "pre_production" are one word for people: staging, not production.
_PREPROD = re.compile(r"pre[-_. ]?prod(uction)?", re.IGNORECASE)
_SPLIT = re.compile(r"[^0-9a-z]+")


def environment_type(name: str) -> EnvironmentType:
    """Infer the type by whole-word match, case-insensitive ("eu-prod-1" → PRODUCTION)."""
    words = set(_SPLIT.split(_PREPROD.sub("preprod", name).lower()))
    for env_type, vocabulary in _WORDS:
        if words & vocabulary:
            return env_type
    return EnvironmentType.UNSPECIFIED
