"""The client's pure parts: status aliases, CI detection, option parsing. No server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from versioner.v1 import deployment_service_pb2 as pb
from versioner_client import cli, exits, inputs, output, settings
from versioner_client.ci import Origin, detect_ci, resolve_origin
from versioner_client.client import backoff_delay
from versioner_client.errors import (
    FieldViolation,
    InvalidArgument,
    PreconditionFailed,
    Unavailable,
    VersionerError,
    from_rpc_error,
)
from versioner_client.exits import Exit
from versioner_client.statuses import parse_status, status_word

# --------------------------------------------------------------------------- statuses

ALIASES = {
    pb.DEPLOYMENT_STATUS_PENDING: ["pending", "queued", "scheduled"],
    pb.DEPLOYMENT_STATUS_STARTED: ["started", "in_progress", "init", "deploying"],
    pb.DEPLOYMENT_STATUS_COMPLETED: ["completed", "success", "complete", "finished", "deployed"],
    pb.DEPLOYMENT_STATUS_FAILED: ["failed", "fail", "failure", "error"],
    pb.DEPLOYMENT_STATUS_ABORTED: [
        "aborted",
        "abort",
        "cancelled",
        "canceled",
        "cancel",
        "skipped",
    ],
}


@pytest.mark.parametrize(
    ("word", "status"), [(w, s) for s, words in ALIASES.items() for w in words]
)
def test_every_alias_maps_to_its_status_case_insensitively(word: str, status: int) -> None:
    assert parse_status(word) == status
    assert parse_status(word.upper()) == status
    assert parse_status(f"  {word.title()} ") == status


@pytest.mark.parametrize("status", list(ALIASES))
def test_enum_names_and_values_are_accepted(status: int) -> None:
    name = pb.DeploymentStatus.Name(status)
    assert parse_status(name) == status
    assert parse_status(name.lower()) == status
    assert parse_status(status) == status


def test_unknown_status_names_the_accepted_words() -> None:
    with pytest.raises(ValueError) as caught:
        parse_status("succeeded-ish")
    message = str(caught.value)
    assert "succeeded-ish" in message
    for word in ("success", "failed", "started", "pending", "aborted", "cancelled"):
        assert word in message


@pytest.mark.parametrize("bad", ["", "unspecified", "DEPLOYMENT_STATUS_UNSPECIFIED", 0, 9])
def test_unspecified_is_not_a_status(bad: str | int) -> None:
    with pytest.raises(ValueError):
        parse_status(bad)


def test_status_word_is_the_short_lower_case_name() -> None:
    assert status_word(pb.DEPLOYMENT_STATUS_COMPLETED) == "completed"
    assert status_word(pb.DEPLOYMENT_STATUS_STARTED) == "started"


# --------------------------------------------------------------------------- CI detection

GITHUB = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_ACTOR": "octocat",
    "GITHUB_SHA": "a" * 40,
    "GITHUB_REF_NAME": "main",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_REPOSITORY": "acme/shop",
    "GITHUB_RUN_ID": "12345",
}
GITLAB = {
    "GITLAB_CI": "true",
    "GITLAB_USER_LOGIN": "jdoe",
    "CI_COMMIT_SHA": "b" * 40,
    "CI_COMMIT_REF_NAME": "release/1.2",
    "CI_JOB_URL": "https://gitlab.example.com/acme/shop/-/jobs/77",
    "CI_PIPELINE_URL": "https://gitlab.example.com/acme/shop/-/pipelines/9",
}
JENKINS = {
    "JENKINS_URL": "https://jenkins.example.com/",
    "BUILD_USER_ID": "jenkins-admin",
    "BUILD_USER": "Jenkins Admin",
    "GIT_COMMIT": "c" * 40,
    "GIT_BRANCH": "origin/main",
    "BUILD_URL": "https://jenkins.example.com/job/shop/42/",
}
CIRCLECI = {
    "CIRCLECI": "true",
    "CIRCLE_USERNAME": "circler",
    "CIRCLE_SHA1": "d" * 40,
    "CIRCLE_BRANCH": "develop",
    "CIRCLE_BUILD_URL": "https://circleci.com/gh/acme/shop/99",
}


def test_github_actions_is_detected() -> None:
    assert detect_ci(GITHUB) == Origin(
        deployed_by="octocat",
        scm_sha="a" * 40,
        scm_branch="main",
        build_url="https://github.com/acme/shop/actions/runs/12345",
        system="github",
    )


def test_github_pull_requests_use_the_head_branch() -> None:
    env = GITHUB | {"GITHUB_REF_NAME": "7/merge", "GITHUB_HEAD_REF": "feature-x"}
    assert detect_ci(env).scm_branch == "feature-x"


def test_gitlab_ci_is_detected_and_prefers_the_job_url() -> None:
    assert detect_ci(GITLAB) == Origin(
        deployed_by="jdoe",
        scm_sha="b" * 40,
        scm_branch="release/1.2",
        build_url="https://gitlab.example.com/acme/shop/-/jobs/77",
        system="gitlab",
    )
    without_job = {k: v for k, v in GITLAB.items() if k != "CI_JOB_URL"}
    assert detect_ci(without_job).build_url == GITLAB["CI_PIPELINE_URL"]


def test_jenkins_is_detected_and_strips_origin_from_the_branch() -> None:
    assert detect_ci(JENKINS) == Origin(
        deployed_by="jenkins-admin",
        scm_sha="c" * 40,
        scm_branch="main",
        build_url="https://jenkins.example.com/job/shop/42/",
        system="jenkins",
    )
    without_id = {k: v for k, v in JENKINS.items() if k != "BUILD_USER_ID"}
    assert detect_ci(without_id).deployed_by == "Jenkins Admin"


def test_circleci_is_detected() -> None:
    assert detect_ci(CIRCLECI) == Origin(
        deployed_by="circler",
        scm_sha="d" * 40,
        scm_branch="develop",
        build_url="https://circleci.com/gh/acme/shop/99",
        system="circleci",
    )


def test_outside_ci_nothing_is_detected() -> None:
    assert detect_ci({"HOME": "/root", "GITHUB_ACTIONS": "false"}) == Origin()


NO_FLAGS: dict[str, str | None] = dict.fromkeys(
    ("deployed_by", "scm_sha", "scm_branch", "build_url")
)


def test_ci_fills_what_neither_flags_nor_versioner_variables_give() -> None:
    origin = resolve_origin(NO_FLAGS, GITHUB, default_user="me")
    assert (origin.deployed_by, origin.scm_sha, origin.scm_branch) == ("octocat", "a" * 40, "main")


def test_versioner_variables_beat_ci_detection() -> None:
    env = GITHUB | {"VERSIONER_DEPLOYED_BY": "release-bot", "VERSIONER_SCM_SHA": "e" * 40}
    origin = resolve_origin(NO_FLAGS, env)
    assert origin.deployed_by == "release-bot"
    assert origin.scm_sha == "e" * 40
    assert origin.scm_branch == "main"  # still from CI


def test_flags_beat_versioner_variables_and_ci() -> None:
    env = GITLAB | {"VERSIONER_DEPLOYED_BY": "release-bot", "VERSIONER_BUILD_URL": "http://x"}
    flags = NO_FLAGS | {"deployed_by": "alice", "build_url": "http://flag"}
    origin = resolve_origin(flags, env)
    assert origin.deployed_by == "alice"
    assert origin.build_url == "http://flag"
    assert origin.scm_sha == "b" * 40


def test_an_explicit_empty_flag_blanks_the_field() -> None:
    origin = resolve_origin(NO_FLAGS | {"scm_sha": ""}, JENKINS)
    assert origin.scm_sha == ""


def test_the_local_user_is_the_last_resort_for_deployed_by() -> None:
    assert resolve_origin(NO_FLAGS, {}, default_user="me").deployed_by == "me"
    assert resolve_origin(NO_FLAGS, {"VERSIONER_DEPLOYED_BY": ""}, "me").deployed_by == "me"


# --------------------------------------------------------------------------- option parsing

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("7d", timedelta(days=7)),
        ("24h", timedelta(hours=24)),
        ("30m", timedelta(minutes=30)),
        ("45s", timedelta(seconds=45)),
        ("2w", timedelta(weeks=2)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("7D", timedelta(days=7)),
    ],
)
def test_since_accepts_durations_ago(text: str, ago: timedelta) -> None:
    assert inputs.parse_since(text, NOW) == NOW - ago


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T02:00:00+02:00", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-01-01T00:00:00", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_since_accepts_iso_times_naive_meaning_utc(text: str, expected: datetime) -> None:
    assert inputs.parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["", "7", "yesterday", "7x", "d7", "-1d"])
def test_since_rejects_anything_else(text: str) -> None:
    with pytest.raises(inputs.UsageError):
        inputs.parse_since(text, NOW)


def test_metadata_pairs_stay_strings() -> None:
    assert inputs.parse_metadata(
        ["ticket=OPS-1", "replicas=3", "url=http://x?a=b", "empty="], None
    ) == {
        "ticket": "OPS-1",
        "replicas": "3",
        "url": "http://x?a=b",
        "empty": "",
    }


@pytest.mark.parametrize("bad", ["novalue", "=value", " =x"])
def test_metadata_pairs_need_a_key_and_an_equals_sign(bad: str) -> None:
    with pytest.raises(inputs.UsageError):
        inputs.parse_metadata([bad], None)


def test_metadata_json_keeps_json_types() -> None:
    assert inputs.parse_metadata(None, '{"replicas": 3, "canary": true, "tags": ["a"]}') == {
        "replicas": 3,
        "canary": True,
        "tags": ["a"],
    }


@pytest.mark.parametrize("bad", ["[1, 2]", '"text"', "3", "{not json"])
def test_metadata_json_must_be_an_object(bad: str) -> None:
    with pytest.raises(inputs.UsageError):
        inputs.parse_metadata(None, bad)


def test_metadata_and_metadata_json_are_exclusive() -> None:
    code = cli.main(
        ["record", "--product", "p", "--version", "1", "--env", "e", "--status", "success",
         "--metadata", "a=b", "--metadata-json", "{}"]
    )  # fmt: skip
    assert code == Exit.ERROR


def test_unknown_status_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["record", "--product", "p", "--version", "1", "--env", "e", "--status", "ok?"])
    assert code == Exit.ERROR
    assert "success" in capsys.readouterr().err


def test_settings_flags_beat_environment_variables() -> None:
    parser = cli.build_parser()
    env = {"VERSIONER_ADDRESS": "env:1", "VERSIONER_TIMEOUT": "3", "VERSIONER_FAIL_OPEN": "1"}
    from_env = settings.resolve_settings(parser.parse_args(["current"]), env)
    assert (from_env.address, from_env.timeout, from_env.fail_open) == ("env:1", 3.0, True)
    # Global options work before and after the subcommand.
    before = parser.parse_args(["--address", "flag:2", "current", "--timeout", "4"])
    flags = settings.resolve_settings(before, env)
    assert (flags.address, flags.timeout) == ("flag:2", 4.0)
    defaults = settings.resolve_settings(parser.parse_args(["current"]), {})
    assert defaults == settings.Settings()


def test_bad_environment_settings_are_usage_errors() -> None:
    args = cli.build_parser().parse_args(["current"])
    for env in ({"VERSIONER_TIMEOUT": "soon"}, {"VERSIONER_TLS": "maybe"}):
        with pytest.raises(inputs.UsageError):
            settings.resolve_settings(args, env)


def test_backoff_grows_with_jitter_and_a_cap() -> None:
    for attempt in range(10):
        delay = backoff_delay(attempt, base=0.2, cap=5.0)
        step = min(5.0, 0.2 * 2**attempt)
        assert step / 2 <= delay <= step


# --------------------------------------------------------------------------- errors and output


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, message: str, *details: object) -> None:
        self._code, self._message = code, message
        status = status_pb2.Status(code=code.value[0], message=message)
        for detail in details:
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        self._trailers = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailers


def test_bad_request_details_become_field_violations() -> None:
    bad = error_details_pb2.BadRequest()
    bad.field_violations.add(field="product_name", description="must not be empty")
    error = from_rpc_error(_FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad", bad))
    assert isinstance(error, InvalidArgument)
    assert error.field_violations == (FieldViolation("product_name", "must not be empty"),)
    assert exits.describe_error(error, "x") == (4, "rejected: product_name: must not be empty")


def test_error_info_reason_is_parsed_for_conflicts() -> None:
    info = error_details_pb2.ErrorInfo(reason="VERSION_SHA_MISMATCH", domain="versioner")
    error = from_rpc_error(_FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "sha differs", info))
    assert isinstance(error, PreconditionFailed)
    assert error.reason == "VERSION_SHA_MISMATCH"
    assert exits.describe_error(error, "x") == (5, "conflict (VERSION_SHA_MISMATCH): sha differs")


def test_connection_errors_fail_open_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    error = from_rpc_error(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "refused\nreally"))
    assert isinstance(error, Unavailable)
    assert cli.report_error(error, settings.Settings(address="h:1")) == 1
    assert capsys.readouterr().err == "versioner: cannot reach h:1: refused really\n"
    assert cli.report_error(error, settings.Settings(fail_open=True)) == 0
    rejected = VersionerError(grpc.StatusCode.PERMISSION_DENIED, "no")
    assert cli.report_error(rejected, settings.Settings(fail_open=True)) == 4


def test_current_table_shows_age_author_and_a_differing_latest() -> None:
    def deployment(version: str, status: int, minutes_ago: int, by: str) -> pb.Deployment:
        d = pb.Deployment(id=version, version=version, status=status, deployed_by=by)
        d.end_time.FromDatetime(NOW - timedelta(minutes=minutes_ago))
        return d

    done = deployment("1.2.3", pb.DEPLOYMENT_STATUS_COMPLETED, 120, "john.doe")
    running = pb.Deployment(id="x", version="1.2.4", status=pb.DEPLOYMENT_STATUS_STARTED)
    states = [
        pb.EnvironmentState(
            product_name="my-service",
            environment_name="production",
            environment_type=pb.ENVIRONMENT_TYPE_PRODUCTION,
            current=done,
            latest=running,
        ),
        pb.EnvironmentState(
            product_name="my-service",
            environment_name="staging",
            environment_type=pb.ENVIRONMENT_TYPE_STAGING,
            current=deployment("1.2.4", pb.DEPLOYMENT_STATUS_COMPLETED, 5, "ci"),
            latest=deployment("1.2.4", pb.DEPLOYMENT_STATUS_COMPLETED, 5, "ci"),
        ),
    ]
    lines = output.format_current(states, NOW)
    assert lines[0].split() == ["ENVIRONMENT", "PRODUCT", "VERSION", "DEPLOYED", "BY", "LATEST"]
    assert lines[1].split() == ["staging", "my-service", "1.2.4", "5", "minutes", "ago", "by", "ci"]
    assert lines[2].split()[:8] == [
        "production", "my-service", "1.2.3", "2", "hours", "ago", "by", "john.doe",
    ]  # fmt: skip
    assert lines[2].endswith("→ 1.2.4 started")
    assert lines[1].index("my-service") == lines[0].index("PRODUCT")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(10, "just now"), (90, "2 minutes ago"), (3600, "1 hour ago"), (7300, "2 hours ago"),
     (86400 * 3, "3 days ago")],
)  # fmt: skip
def test_ages_read_like_speech(seconds: int, text: str) -> None:
    assert output.humanize_age(NOW - timedelta(seconds=seconds), NOW) == text


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for line in ("0  ok", "1  usage error", "4  rejected", "5  precondition conflict"):
        assert line in out
    assert "exit codes" in (cli.__doc__ or "").lower()
