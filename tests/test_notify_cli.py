"""`versioner notify ...` against a real server and a real receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from versioner_client import VersionerClient
from versioner_client.cli import main

from tests.receiver import Receiver
from tests.test_notifications import notify_config, nserver, wait_settled  # noqa: F401
from tests.test_watch import record

SECRET = "cli-secret-0123456789"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver({"cli": SECRET})
    try:
        yield r
    finally:
        r.close()


def run(capsys, server, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--address", server.address])
    out, err = capsys.readouterr()
    return code, out, err


def test_notify_add_list_test_deliveries_update_rm(nserver, receiver, capsys, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    code, out, _ = run(
        capsys, nserver, "notify", "add", "--name", "cli", "--url", receiver.url("cli"),
        "--secret-env", "HOOK_SECRET", "--env-type", "production",
        "--event", "deployment.completed", "--json",
    )  # fmt: skip
    assert code == 0
    created = json.loads(out)
    assert created["has_secret"] is True and "secret" not in created
    assert created["environment_types"] == ["ENVIRONMENT_TYPE_PRODUCTION"]

    code, out, _ = run(capsys, nserver, "notify", "list")
    assert code == 0 and "cli" in out and "types=production" in out and SECRET not in out

    code, out, _ = run(capsys, nserver, "notify", "test", "cli")
    assert code == 0 and "HTTP 200" in out
    assert receiver.on("cli")[0].headers["x-versioner-event"] == "ping"

    record(nserver.stub, version="9.9")
    wait_settled(nserver, created["id"], 2)
    code, out, _ = run(capsys, nserver, "notify", "deliveries", "--subscription", "cli")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "CREATED", "EVENT"]
    assert "deployment.completed" in lines[1] and "succeeded" in lines[1]
    delivery_id = lines[1].split()[0]

    code, out, _ = run(capsys, nserver, "notify", "redeliver", delivery_id)
    assert code == 0 and "queued again" in out
    receiver.wait_for("cli", 3)
    assert receiver.bad_signatures == []

    code, out, _ = run(
        capsys, nserver, "notify", "update", "cli", "--disable", "--clear", "env-type", "--json"
    )
    assert code == 0
    updated = json.loads(out)
    assert updated["enabled"] is False and updated["environment_types"] == []

    code, out, _ = run(capsys, nserver, "notify", "rm", "cli")
    assert code == 0
    with VersionerClient(nserver.address) as client:
        assert client.notifications.list_subscriptions() == []


def test_notify_add_with_bad_input_exits_4_naming_the_field(nserver, capsys):  # noqa: F811
    code, _, err = run(
        capsys, nserver, "notify", "add", "--name", "x", "--url", "ftp://example.com/"
    )
    assert code == 4
    assert "url" in err


def test_notify_on_an_unknown_subscription_is_a_usage_error(nserver, capsys):  # noqa: F811
    code, _, err = run(capsys, nserver, "notify", "test", "nope")
    assert code == 1 and "no subscription" in err
