"""Names and payloads shared by the seeder, the load processes and the null service.

The stored dataset spreads deployments over PRODUCTS x ENVIRONMENTS (1,000)
product/environment pairs; the load asks about the same pairs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from versioner.v1 import deployment_service_pb2 as pb

from versioner_grpc import convert
from versioner_grpc.domain.environments import environment_type
from versioner_grpc.domain.model import Deployment, EnvironmentState, Status, StoredEvent

PRODUCTS = [f"svc-{p:03d}" for p in range(100)]
ENVIRONMENTS = [
    "production",
    "staging",
    "qa",
    "dev",
    "eu-prod",
    "us-prod",
    "uat",
    "integration",
    "sandbox",
    "perf",
]
PAIRS = [(p, e) for p in PRODUCTS for e in ENVIRONMENTS]
HISTORY_PAGE = 50


def pair(index: int) -> tuple[str, str]:
    """The product/environment pair of a pair index (product-major)."""
    return PRODUCTS[index // len(ENVIRONMENTS)], ENVIRONMENTS[index % len(ENVIRONMENTS)]


def sha_for(product: str, version: str) -> str:
    """The commit a (product, version) is built from: stable, so bindings agree."""
    return hashlib.sha1(f"{product}@{version}".encode()).hexdigest()


def sample_deployment(index: int = 0, now_us: int = 1_700_000_000_000_000) -> Deployment:
    """A completed deployment shaped like the seeded ones (all fields filled)."""
    product, env = pair(index % len(PAIRS))
    version = f"1.0.{index}"
    return Deployment(
        id=f"{index:032x}",
        product=product,
        version=version,
        environment=env,
        environment_type=environment_type(env),
        status=Status.COMPLETED,
        create_time=now_us - 300_000_000,
        update_time=now_us,
        deployed_by="deploy-bot",
        scm_branch="main",
        scm_sha=sha_for(product, version),
        build_url=f"https://ci.example.com/{product}/builds/{index}",
        metadata={"pipeline": "seed", "build": index},
        start_time=now_us - 300_000_000,
        end_time=now_us,
        previous_version=f"1.0.{max(index - 1, 0)}",
        scm_commit_time=now_us - 3_600_000_000,
    )


def sample_event(revision: int = 1) -> StoredEvent:
    d = sample_deployment(revision)
    return StoredEvent(
        revision=revision,
        event_id=f"{revision:032x}",
        status=Status.COMPLETED,
        event_time=d.end_time or 0,
        record_time=d.update_time,
        deployment=d,
    )


@dataclass(frozen=True)
class NullResponses:
    """What the null service answers."""

    record: pb.RecordEventResponse
    current: pb.GetCurrentResponse
    history: pb.ListHistoryResponse


def null_responses() -> NullResponses:
    """Prebuilt responses of the same shape as Versioner's real answers."""
    record = pb.RecordEventResponse(event=convert.event(sample_event(1)), duplicate=False)
    state = EnvironmentState(
        product=PRODUCTS[0],
        environment=ENVIRONMENTS[0],
        environment_type=environment_type(ENVIRONMENTS[0]),
        current=sample_deployment(1),
        latest=sample_deployment(2),
    )
    current = pb.GetCurrentResponse(states=[convert.state(state)], revision=123_456)
    history = pb.ListHistoryResponse(
        deployments=[convert.deployment(sample_deployment(i)) for i in range(HISTORY_PAGE)],
        # A real token is an opaque, signed keyset position of about this size.
        next_page_token="x" * 118,
        revision=123_456,
    )
    return NullResponses(record, current, history)
