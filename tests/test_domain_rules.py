"""Unit tests of the pure domain rules (DESIGN.md section 1): no server, no database."""

from __future__ import annotations

import pytest

from versioner_grpc.domain.environments import environment_type
from versioner_grpc.domain.errors import FailedPrecondition, InvalidArgument
from versioner_grpc.domain.lifecycle import Action, decide
from versioner_grpc.domain.model import EnvironmentType, Status
from versioner_grpc.domain.validation import validate_event

NOW = 1_750_000_000_000_000  # microseconds since the epoch
MINUTE = 60 * 1_000_000
TERMINALS = [Status.COMPLETED, Status.FAILED, Status.ABORTED]
ALL = [Status.PENDING, Status.STARTED, *TERMINALS]


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("event", ALL, ids=lambda s: s.name)
def test_lifecycle_no_open_deployment_creates_a_new_one(event):
    assert decide(None, event) is Action.CREATE


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (Status.PENDING, Action.DUPLICATE),
        (Status.STARTED, Action.TRANSITION),
        (Status.COMPLETED, Action.TRANSITION),
        (Status.FAILED, Action.TRANSITION),
        (Status.ABORTED, Action.TRANSITION),
    ],
    ids=lambda x: x.name,
)
def test_lifecycle_open_pending_deployment(event, expected):
    assert decide(Status.PENDING, event) is expected
    assert decide(Status.PENDING, event, start_known=False) is expected


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (Status.PENDING, Action.DUPLICATE),  # no regress
        (Status.STARTED, Action.DUPLICATE),
        (Status.COMPLETED, Action.TRANSITION),
        (Status.FAILED, Action.TRANSITION),
        (Status.ABORTED, Action.TRANSITION),
    ],
    ids=lambda x: x.name,
)
def test_lifecycle_open_started_deployment(event, expected):
    assert decide(Status.STARTED, event) is expected


@pytest.mark.parametrize("stored", TERMINALS, ids=lambda s: s.name)
def test_terminal_states_are_final(stored):
    for event in TERMINALS:
        if event == stored:
            assert decide(stored, event) is Action.DUPLICATE
            continue
        with pytest.raises(FailedPrecondition) as info:
            decide(stored, event)
        assert info.value.reason == "INVALID_TRANSITION"


@pytest.mark.parametrize("stored", TERMINALS, ids=lambda s: s.name)
@pytest.mark.parametrize("event", [Status.PENDING, Status.STARTED], ids=lambda s: s.name)
def test_late_open_event_on_ended_deployment_only_fills_missing_start(stored, event):
    assert decide(stored, event, start_known=False) is Action.FILL_START
    assert decide(stored, event, start_known=True) is Action.DUPLICATE


def test_terminal_statuses_are_exactly_completed_failed_aborted():
    assert {s for s in Status if s.is_terminal} == set(TERMINALS)
    assert {s for s in Status if s.is_open} == {Status.PENDING, Status.STARTED}


# --------------------------------------------------------------------------- environment types


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("prod", EnvironmentType.PRODUCTION),
        ("production", EnvironmentType.PRODUCTION),
        ("live", EnvironmentType.PRODUCTION),
        ("PROD", EnvironmentType.PRODUCTION),
        ("Production", EnvironmentType.PRODUCTION),
        ("eu-prod-1", EnvironmentType.PRODUCTION),
        ("us_east_production", EnvironmentType.PRODUCTION),
        ("Live.EU", EnvironmentType.PRODUCTION),
        ("staging", EnvironmentType.STAGING),
        ("stage", EnvironmentType.STAGING),
        ("uat", EnvironmentType.STAGING),
        ("preprod", EnvironmentType.STAGING),
        ("pre-prod", EnvironmentType.STAGING),
        ("Pre-Prod", EnvironmentType.STAGING),
        ("eu-staging-2", EnvironmentType.STAGING),
        ("UAT", EnvironmentType.STAGING),
        ("test", EnvironmentType.TEST),
        ("qa", EnvironmentType.TEST),
        ("integration", EnvironmentType.TEST),
        ("QA-1", EnvironmentType.TEST),
        ("dev", EnvironmentType.DEVELOPMENT),
        ("development", EnvironmentType.DEVELOPMENT),
        ("local", EnvironmentType.DEVELOPMENT),
        ("sandbox", EnvironmentType.DEVELOPMENT),
        ("DEV-alice", EnvironmentType.DEVELOPMENT),
        ("productionish", EnvironmentType.UNSPECIFIED),
        ("reproduction", EnvironmentType.UNSPECIFIED),
        ("latest", EnvironmentType.UNSPECIFIED),
        ("devops", EnvironmentType.UNSPECIFIED),
        ("qatar", EnvironmentType.UNSPECIFIED),
        ("foo", EnvironmentType.UNSPECIFIED),
        ("", EnvironmentType.UNSPECIFIED),
    ],
)
def test_environment_type_is_inferred_by_word_case_insensitive(name, expected):
    assert environment_type(name) is expected


# --------------------------------------------------------------------------- validation


def event(**changes):
    """validate_event with a valid request, changed by `changes`."""
    values = dict(
        product="my-service",
        version="1.2.3",
        environment="production",
        status=int(Status.COMPLETED),
        now=NOW,
    )
    values.update(changes)
    return validate_event(**values)


def violations(**changes) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as info:
        event(**changes)
    fields = [f for f, _ in info.value.violations]
    assert fields, "an InvalidArgument must name at least one field"
    return dict(info.value.violations)


def test_valid_event_is_normalized():
    e = event(event_time=NOW - MINUTE, deployed_by="alice", build_url="https://ci.example/1")
    assert (e.product, e.version, e.environment) == ("my-service", "1.2.3", "production")
    assert e.status is Status.COMPLETED
    assert e.event_time == NOW - MINUTE
    assert e.deployed_by == "alice"
    assert e.build_url == "https://ci.example/1"


def test_event_time_defaults_to_receipt():
    assert event().event_time == NOW


def test_event_id_is_generated_when_not_given():
    a, b = event(), event()
    assert a.event_id and b.event_id and a.event_id != b.event_id
    assert not a.event_id_given
    given = event(event_id="ci-42")
    assert given.event_id == "ci-42" and given.event_id_given


def test_names_are_trimmed():
    e = event(product="  my-service\t", version=" 1.2.3 ", environment="\nproduction  ")
    assert (e.product, e.version, e.environment) == ("my-service", "1.2.3", "production")


def test_names_are_case_sensitive():
    e = event(product="My-Service", environment="Production")
    assert (e.product, e.environment) == ("My-Service", "Production")


@pytest.mark.parametrize(
    ("arg", "field"),
    [("product", "product_name"), ("version", "version"), ("environment", "environment_name")],
)
@pytest.mark.parametrize("value", ["", "   ", "\t\n"], ids=["empty", "spaces", "whitespace"])
def test_empty_names_are_rejected(arg, field, value):
    assert field in violations(**{arg: value})


@pytest.mark.parametrize(
    ("arg", "field", "limit"),
    [
        ("product", "product_name", 255),
        ("version", "version", 100),
        ("environment", "environment_name", 100),
    ],
)
def test_names_are_limited_in_length_at_the_exact_limit(arg, field, limit):
    assert getattr(event(**{arg: "a" * limit}), arg) == "a" * limit
    assert field in violations(**{arg: "a" * (limit + 1)})
    # Trimming happens before the length check.
    assert getattr(event(**{arg: " " + "a" * limit + " "}), arg) == "a" * limit


@pytest.mark.parametrize(
    ("arg", "field"),
    [("product", "product_name"), ("version", "version"), ("environment", "environment_name")],
)
@pytest.mark.parametrize("bad", ["a\x00b", "a\nb", "a\x1bb", "a\x7fb", "a\x85b"])
def test_names_with_control_characters_are_rejected(arg, field, bad):
    assert field in violations(**{arg: bad})


def test_unicode_names_are_accepted():
    e = event(product="café-ü-服务", environment="produção")
    assert (e.product, e.environment) == ("café-ü-服务", "produção")


@pytest.mark.parametrize("status", [0, 6, 99, -1])
def test_status_must_be_a_known_non_zero_status(status):
    assert "status" in violations(status=status)


@pytest.mark.parametrize(
    "url", ["http://ci.example/job/1", "https://ci.example/job/1?x=1#y", "HTTPS://CI.EXAMPLE/"]
)
def test_build_url_http_or_https_is_accepted(url):
    assert event(build_url=url).build_url == url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://ci.example/job/1",
        "javascript:alert(1)",
        "file:///etc/passwd",
        "ci.example/job/1",
        "http://",
        "https:///path-only",
        "not a url",
    ],
)
def test_build_url_must_be_http_or_https(url):
    assert "build_url" in violations(build_url=url)


def test_metadata_over_64_kib_is_rejected():
    assert event(metadata={"k": "v"}, metadata_bytes=64 * 1024).metadata == {"k": "v"}
    assert "extra_metadata" in violations(metadata={"k": "v"}, metadata_bytes=64 * 1024 + 1)


def test_event_time_more_than_5_minutes_in_the_future_is_rejected():
    assert "event_time" in violations(event_time=NOW + 5 * MINUTE + 1)
    assert "event_time" in violations(event_time=NOW + 60 * MINUTE)


def test_event_time_up_to_5_minutes_in_the_future_is_accepted():
    assert event(event_time=NOW + 4 * MINUTE).event_time == NOW + 4 * MINUTE
    assert event(event_time=NOW + 5 * MINUTE).event_time == NOW + 5 * MINUTE


def test_old_event_time_is_accepted_for_backfill():
    year = 365 * 24 * 60 * MINUTE
    assert event(event_time=NOW - 5 * year).event_time == NOW - 5 * year


def test_several_violations_are_collected_at_once():
    found = violations(
        product="",
        version="v" * 101,
        environment="prod\x00",
        status=0,
        build_url="ftp://x",
        metadata_bytes=70_000,
        event_time=NOW + 10 * MINUTE,
    )
    assert set(found) >= {
        "product_name",
        "version",
        "environment_name",
        "status",
        "build_url",
        "extra_metadata",
        "event_time",
    }
    assert all(found.values()), "each violation explains itself"
