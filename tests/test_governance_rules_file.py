"""The rules file: validation errors name the file, the line/rule and the reason (for
`versioner-server rules check`, at startup and on SIGHUP, which keeps the old rules);
recurring freeze windows in IANA time zones across DST changes."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import signal
import time
from pathlib import Path

import grpc
import pytest
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import governance_service_pb2 as gpb
from versioner.v1 import governance_service_pb2_grpc as gpb_grpc

from tests.governance_support import TIMEOUT, Governed, refused
from tests.processes import ServerProcess
from versioner_grpc import server_cli
from versioner_grpc.governance import rules

GOOD = """
[[rule]]
name = "prod-approval"
kind = "approval"
environment_types = ["production"]
"""


def check(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = server_cli.main(["rules", "check", str(path)])
    return code, out.getvalue(), err.getvalue()


BAD = {
    "unknown_kind": ('[[rule]]\nname = "a"\nkind = "quota"\n', ":1: rule 1 ('a')", "unknown kind"),
    "unknown_field": (
        '[[rule]]\nname = "a"\nkind = "approval"\n\n[[rule]]\nname = "b"\nkind = "freeze"\n'
        "start = 2026-01-01T00:00:00Z\nend = 2026-01-02T00:00:00Z\nrequired_approvals = 2\n",
        ":5: rule 2 ('b')",
        "unknown field(s) required_approvals for kind 'freeze'",
    ),
    "bad_glob": (
        '[[rule]]\nname = "a"\nkind = "concurrency"\nenvironments = ["prod-[eu"]\n',
        ":1: rule 1 ('a')",
        "bad glob 'prod-[eu'",
    ),
    "never_fires": (
        '[[rule]]\nname = "feb30"\nkind = "freeze"\nschedule = "0 0 30 2 *"\nduration = "1h"\n',
        "rule 1 ('feb30')",
        "never fires",
    ),
    "bad_cron": (
        '[[rule]]\nname = "a"\nkind = "freeze"\nschedule = "every friday"\nduration = "1h"\n',
        "rule 1 ('a')",
        "not a valid cron expression",
    ),
    "unknown_timezone": (
        '[[rule]]\nname = "a"\nkind = "freeze"\nschedule = "0 18 * * FRI"\nduration = "1h"\n'
        'timezone = "Europe/Atlantis"\n',
        "rule 1 ('a')",
        "unknown time zone 'Europe/Atlantis'",
    ),
    "duplicate_name": (
        '[[rule]]\nname = "a"\nkind = "concurrency"\n[[rule]]\nname = "a"\nkind = "concurrency"\n',
        ":4: rule 2 ('a')",
        "duplicate rule name 'a'",
    ),
    "bad_mode": ('[[rule]]\nname = "a"\nkind = "concurrency"\nmode = "warn"\n', "rule 1", "mode"),
    "bad_type": (
        '[[rule]]\nname = "a"\nkind = "concurrency"\nenvironment_types = ["prodution"]\n',
        "rule 1",
        "unknown environment type 'prodution'",
    ),
    "bad_duration": (
        '[[rule]]\nname = "a"\nkind = "approval"\napproval_ttl = "a day"\n',
        "rule 1",
        "'approval_ttl' 'a day' is not a duration",
    ),
    "naive_start": (
        '[[rule]]\nname = "a"\nkind = "freeze"\nstart = 2026-01-01T00:00:00\n'
        "end = 2026-01-02T00:00:00Z\n",
        "rule 1",
        "needs a UTC offset",
    ),
    "flow_without_requirement": (
        '[[rule]]\nname = "a"\nkind = "flow"\nsoak = "1h"\n',
        "rule 1",
        "needs 'requires'",
    ),
    "not_toml": ("[[rule]\nname = ", "invalid TOML", "line 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_rules_check_names_file_rule_and_reason(tmp_path, case):
    text, where, why = BAD[case]
    path = tmp_path / "rules.toml"
    path.write_text(text)
    code, _, err = check(path)
    assert code == 1
    assert str(path) in err and where in err and why in err, err
    with pytest.raises(rules.RulesError):
        rules.load(path)


def test_rules_check_accepts_the_readme_example_and_lists_rules(tmp_path):
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = readme.split("```toml\n# rules.toml")[1].split("```")[0]
    path = tmp_path / "rules.toml"
    path.write_text(example)
    code, out, _ = check(path)
    assert code == 0, out
    assert "production-approval: approval, enforce" in out
    assert "weekend-freeze: freeze, enforce" in out
    assert "staging-first: flow, enforce" in out


def test_startup_fails_on_a_broken_rules_file(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(BAD["duplicate_name"][0])
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = server_cli.main(
            [
                "--listen=127.0.0.1:0",
                "--metrics-listen=off",
                f"--database-url=sqlite:///{tmp_path}/v.db",
                f"--rules-file={path}",
            ]
        )
    assert code == 1
    assert "duplicate rule name 'a'" in err.getvalue() and str(path) in err.getvalue()


def us(year, month, day, hour, minute=0, zone="Europe/Berlin") -> int:
    from zoneinfo import ZoneInfo

    when = dt.datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(zone))
    return int(when.timestamp() * 1_000_000)


WEEKEND = rules.parse(
    b'[[rule]]\nname = "weekend"\nkind = "freeze"\nschedule = "0 18 * * FRI"\n'
    b'duration = "62h"\ntimezone = "Europe/Berlin"\n'
).rules[0]


def test_weekend_freeze_ends_monday_0800_local_across_the_october_dst_change():
    # 2026-10-25 03:00 CEST -> 02:00 CET: the weekend is 63 real hours long.
    assert rules.freeze_window_end(WEEKEND, us(2026, 10, 23, 17, 59)) is None
    end = rules.freeze_window_end(WEEKEND, us(2026, 10, 23, 18, 0))
    assert end == us(2026, 10, 26, 8, 0)
    assert rules.freeze_window_end(WEEKEND, us(2026, 10, 26, 7, 30)) == end
    assert rules.freeze_window_end(WEEKEND, us(2026, 10, 26, 8, 0)) is None
    # In UTC, the window ends at 07:00 (CET is UTC+1), not 06:00 (62 h after 16:00Z).
    assert rules.rfc3339(end) == "2026-10-26T07:00:00Z"


def test_weekend_freeze_across_the_march_dst_change():
    # 2026-03-29 02:00 CET -> 03:00 CEST: the weekend is 61 real hours long.
    end = rules.freeze_window_end(WEEKEND, us(2026, 3, 27, 20, 0))
    assert end == us(2026, 3, 30, 8, 0)
    assert rules.rfc3339(end) == "2026-03-30T06:00:00Z"
    assert rules.freeze_window_end(WEEKEND, us(2026, 3, 30, 8, 0)) is None
    assert rules.freeze_window_end(WEEKEND, us(2026, 3, 31, 12, 0)) is None


def test_a_window_in_another_zone_uses_its_local_time():
    tokyo = rules.parse(
        b'[[rule]]\nname = "t"\nkind = "freeze"\nschedule = "0 9 * * *"\nduration = "1h"\n'
        b'timezone = "Asia/Tokyo"\n'
    ).rules[0]
    assert rules.freeze_window_end(tokyo, us(2026, 6, 1, 9, 30, "Asia/Tokyo")) is not None
    assert rules.freeze_window_end(tokyo, us(2026, 6, 1, 9, 30, "UTC")) is None


# ------------------------------------------------------------- reload


@pytest.fixture
def governed(config, tmp_path):
    running = Governed(config, tmp_path, GOOD)
    try:
        yield running
    finally:
        running.stop()


def test_reload_swaps_rules_and_a_broken_file_keeps_the_old_ones(governed):
    assert refused(lambda: governed.record())[1].reason == "APPROVAL_REQUIRED"
    assert governed.reload("[[rule]]\nname = 'x'\nkind = 'nope'\n") is False
    assert refused(lambda: governed.record())[1].reason == "APPROVAL_REQUIRED"
    assert governed.reload("") is True
    assert governed.record().event.deployment.status == pb.DEPLOYMENT_STATUS_STARTED
    reloads = governed.audit("rules.reloaded")
    assert [e.details["trigger"] for e in reloads] == ["start", "reload"]
    assert reloads[0].details["sha256"] != reloads[1].details["sha256"]
    assert reloads[0].details["rules"] == ["prod-approval"]


def _eventually(predicate, what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_sighup_reloads_the_rules_file_of_a_server_process(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text(GOOD)
    server = ServerProcess(
        "--listen=127.0.0.1:0",
        "--metrics-listen=off",
        f"--database-url=sqlite:///{tmp_path}/v.db",
        f"--rules-file={path}",
    )
    try:
        request = pb.RecordEventRequest(
            product_name="shop",
            version="1",
            environment_name="production",
            status=pb.DEPLOYMENT_STATUS_STARTED,
        )
        with pytest.raises(grpc.RpcError) as refusal:
            server.stub.RecordEvent(request, timeout=TIMEOUT)
        assert refusal.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        path.write_text("[[rule]]\nname = 'broken'\n")
        server.proc.send_signal(signal.SIGHUP)
        _eventually(
            lambda: any(e.get("event") == "rules_reload_failed" for e in server.lines),
            "the failed reload to be logged",
        )
        failed = next(e for e in server.lines if e.get("event") == "rules_reload_failed")
        assert f"{path}:1: rule 1 ('broken'): 'kind' is required" in failed["msg"]
        with pytest.raises(grpc.RpcError):
            server.stub.RecordEvent(request, timeout=TIMEOUT)
        path.write_text("")
        server.proc.send_signal(signal.SIGHUP)

        def allowed() -> bool:
            try:
                server.stub.RecordEvent(request, timeout=TIMEOUT)
                return True
            except grpc.RpcError:
                return False

        _eventually(allowed, "the emptied rules file to be loaded")
        gov = gpb_grpc.GovernanceServiceStub(server.channel)
        reloads = gov.ListAudit(gpb.ListAuditRequest(kinds=["rules.reloaded"]), timeout=TIMEOUT)
        assert len(reloads.entries) == 2
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0


class _NoStore:
    """Freeze rules must decide without the store: any question fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"a freeze rule asked the store {name}")


def test_cached_freeze_decision_follows_the_window_boundaries():
    ruleset = rules.parse(
        b'[[rule]]\nname = "weekend"\nkind = "freeze"\nschedule = "0 18 * * FRI"\n'
        b'duration = "62h"\ntimezone = "Europe/Berlin"\n'
    )
    target = rules.Target("shop", "1", "production")
    facts = _NoStore()
    times = [
        (us(2026, 10, 23, 17, 59), False),
        (us(2026, 10, 23, 18, 0), True),
        (us(2026, 10, 26, 7, 59), True),
        (us(2026, 10, 26, 8, 0), False),
        (us(2026, 10, 30, 17, 0), False),
        (us(2026, 10, 30, 19, 0), True),
        (us(2026, 10, 23, 19, 0), True),  # back in time: recomputed, not served stale
        (us(2026, 10, 22, 19, 0), False),
    ]
    for now, frozen in times:
        blocking = ruleset.evaluate(target, facts, now).blocking  # type: ignore[arg-type]
        assert (blocking is not None) == frozen, rules.rfc3339(now)
        _, start, until = rules.freeze_state(ruleset.rules[0], now)
        assert start <= now < until
