"""The `versioner` CLI and the Python client against a real server process.

Each test starts `python -m versioner_grpc` on a temp SQLite file and runs the CLI
the way a pipeline does: as a subprocess, reading its output and exit code.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from versioner.v1 import deployment_service_pb2 as pb
from versioner_client import PreconditionFailed, VersionerClient

# Variables that would make the CLI pick up settings or CI context from the
# machine running the tests.
_CI_VARIABLES = ("GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "CIRCLECI")


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m versioner_grpc` as a subprocess, restartable on the same port and file."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, port: int | None = None, timeout: float = 30.0) -> None:
        """Start it (on ``port``, else the last port, else any) and wait until it serves."""
        port = self.port if port is None else port
        serving = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "versioner_grpc",
             "--listen", f"127.0.0.1:{port}",
             "--metrics-listen", "127.0.0.1:0",
             "--database-url", f"sqlite:///{self.database}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

        def read(stream) -> None:
            for line in stream:
                self.log.append(line)
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event") == "serving":
                    self.port = int(record["grpc_address"].rpartition(":")[2])
                    serving.set()

        threading.Thread(target=read, args=(self.process.stderr,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not serving.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail("server did not start:\n" + "".join(self.log))

    def stop(self) -> None:
        """Stop it the way an orchestrator does: SIGTERM, then SIGKILL."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


@pytest.fixture
def versioner_server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running server process on a free port over a temp SQLite file."""
    server = ServerProcess(tmp_path / "v.db")
    server.start(port=0)
    try:
        yield server
    finally:
        server.stop()


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VERSIONER_") and k not in _CI_VARIABLES
    }
    return env | extra


def versioner(
    address: str, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI like a pipeline step would."""
    return subprocess.run(
        [sys.executable, "-m", "versioner_client.cli", "--address", address, *args],
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def record_args(product: str = "shop", version: str = "1.0", env: str = "production") -> list[str]:
    return ["--product", product, "--version", version, "--env", env]


def history(server: ServerProcess, *args: str) -> list[dict]:
    result = versioner(server.address, "history", "--json", "--limit", "0", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["deployments"]


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# --------------------------------------------------------------------------- record


def test_record_prints_the_deployment_id_and_status(versioner_server_process) -> None:
    server = versioner_server_process
    result = versioner(
        server.address, "record", *record_args(), "--status", "success",
        "--deployed-by", "john.doe", "--metadata", "ticket=OPS-1", "--metadata", "replicas=3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    deployment_id, status = result.stdout.split()
    assert status == "completed"
    [stored] = history(server)
    assert stored["id"] == deployment_id
    assert stored["deployed_by"] == "john.doe"
    assert stored["extra_metadata"] == {"ticket": "OPS-1", "replicas": "3"}


def test_record_json_and_event_id_replay(versioner_server_process) -> None:
    server = versioner_server_process
    args = ["record", *record_args(), "--status", "started", "--event-id", "evt-1", "--json"]
    first = versioner(server.address, *args)
    again = versioner(server.address, *args)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    first_json, again_json = json.loads(first.stdout), json.loads(again.stdout)
    assert first_json["duplicate"] is False
    assert again_json["duplicate"] is True
    assert first_json["event"]["deployment"]["id"] == again_json["event"]["deployment"]["id"]
    assert first_json["event"]["deployment"]["status"] == "DEPLOYMENT_STATUS_STARTED"
    assert len(history(server)) == 1


def test_ci_variables_fill_in_who_and_what(versioner_server_process) -> None:
    server = versioner_server_process
    env = cli_env(
        GITLAB_CI="true",
        GITLAB_USER_LOGIN="jdoe",
        CI_COMMIT_SHA="abcdef1234",
        CI_COMMIT_REF_NAME="main",
        CI_JOB_URL="https://gitlab.example.com/jobs/1",
        VERSIONER_SCM_BRANCH="release",
    )
    result = versioner(server.address, "record", *record_args(), "--status", "ok", env=env)
    assert result.returncode == 1  # "ok" is no status word: usage error
    result = versioner(server.address, "record", *record_args(), "--status", "deployed", env=env)
    assert result.returncode == 0, result.stderr
    [stored] = history(server)
    assert stored["deployed_by"] == "jdoe"
    assert stored["scm_sha"] == "abcdef1234"
    assert stored["scm_branch"] == "release"  # VERSIONER_* beats CI
    assert stored["build_url"] == "https://gitlab.example.com/jobs/1"


# --------------------------------------------------------------------------- exit codes


def test_unreachable_server_exits_1_with_one_line(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = versioner(address, "record", *record_args(), "--status", "success", "--retries", "1")
    assert result.returncode == 1
    assert one_line(result.stderr).startswith(f"versioner: cannot reach {address}: ")


def test_bad_input_is_rejected_with_exit_4(versioner_server_process) -> None:
    server = versioner_server_process
    result = versioner(server.address, "record", *record_args(product=""), "--status", "success")
    assert result.returncode == 4
    assert one_line(result.stderr) == "versioner: rejected: product_name: must not be empty"
    assert history(server) == []


def test_sha_mismatch_is_a_conflict_with_exit_5(versioner_server_process) -> None:
    server = versioner_server_process
    sha_a, sha_b = "a" * 40, "b" * 40
    first = versioner(
        server.address, "record", *record_args(version="1.0"), "--status", "success",
        "--scm-sha", sha_a,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    second = versioner(
        server.address, "record", *record_args(version="1.0"), "--status", "success",
        "--scm-sha", sha_b,
    )  # fmt: skip
    assert second.returncode == 5
    assert one_line(second.stderr).startswith("versioner: conflict (VERSION_SHA_MISMATCH): ")


def test_usage_errors_exit_1(versioner_server_process) -> None:
    server = versioner_server_process
    assert versioner(server.address, "record", "--product", "x").returncode == 1
    assert versioner(server.address, "history", "--since", "yesterday").returncode == 1
    result = versioner(server.address, "record", *record_args(), "--status", "success",
                       "--metadata-json", "[1]")  # fmt: skip
    assert result.returncode == 1
    assert "JSON object" in one_line(result.stderr)


def test_fail_open_turns_only_outages_into_warnings(versioner_server_process) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    args = ["record", *record_args(), "--status", "success", "--retries", "1"]
    flag = versioner(unreachable, *args, "--fail-open")
    assert flag.returncode == 0
    assert one_line(flag.stderr).startswith(f"versioner: warning: cannot reach {unreachable}")
    from_env = versioner(unreachable, *args, env=cli_env(VERSIONER_FAIL_OPEN="true"))
    assert from_env.returncode == 0
    # A rejection still fails, --fail-open or not.
    rejected = versioner(
        versioner_server_process.address,
        "record", *record_args(product=""), "--status", "success", "--fail-open",
    )  # fmt: skip
    assert rejected.returncode == 4


# --------------------------------------------------------------------------- current, history


def test_current_shows_what_runs_where(versioner_server_process) -> None:
    server = versioner_server_process
    for version, env, status in [
        ("1.2.3", "production", "success"),
        ("1.2.4", "staging", "success"),
        ("1.2.4", "production", "started"),
    ]:
        result = versioner(
            server.address, "record", *record_args("my-service", version, env),
            "--status", status, "--deployed-by", "john.doe",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    table = versioner(server.address, "current")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ENVIRONMENT", "PRODUCT", "VERSION", "DEPLOYED", "BY", "LATEST"]
    production = next(row for row in rows if row.startswith("production"))
    assert production.split()[:3] == ["production", "my-service", "1.2.3"]
    assert "by john.doe" in production
    assert production.endswith("→ 1.2.4 started just now")
    staging = next(row for row in rows if row.startswith("staging"))
    assert "→" not in staging
    assert production.index("1.2.3") == header.index("VERSION") == staging.index("1.2.4")

    only = versioner(server.address, "current", "--env", "production", "--json")
    assert only.returncode == 0, only.stderr
    [state] = json.loads(only.stdout)["states"]
    assert state["current"]["version"] == "1.2.3"
    assert state["latest"]["version"] == "1.2.4"
    assert state["latest"]["status"] == "DEPLOYMENT_STATUS_STARTED"


def test_history_filters_and_limits(versioner_server_process) -> None:
    server = versioner_server_process
    for i, status in enumerate(["success", "failed", "error", "success", "cancelled"]):
        result = versioner(
            server.address, "record", *record_args(version=f"1.{i}"), "--status", status,
            "--deployed-by", "alice" if i % 2 else "bob",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr

    assert [d["version"] for d in history(server)] == ["1.4", "1.3", "1.2", "1.1", "1.0"]
    failed = history(server, "--status", "fail")
    assert [d["version"] for d in failed] == ["1.2", "1.1"]
    two_statuses = history(server, "--status", "failed", "--status", "aborted")
    assert {d["version"] for d in two_statuses} == {"1.1", "1.2", "1.4"}
    assert [d["version"] for d in history(server, "--version", "1.3")] == ["1.3"]
    assert {d["version"] for d in history(server, "--deployed-by", "alice")} == {"1.1", "1.3"}
    assert len(history(server, "--since", "1h")) == 5
    assert history(server, "--since", "2999-01-01T00:00:00Z") == []

    limited = versioner(server.address, "history", "--limit", "2", "--json")
    assert [d["version"] for d in json.loads(limited.stdout)["deployments"]] == ["1.4", "1.3"]
    table = versioner(server.address, "history", "--limit", "3")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:5] == ["TIME", "STATUS", "PRODUCT", "VERSION", "ENVIRONMENT"]
    assert [row.split()[1] for row in rows] == ["aborted", "completed", "failed"]


def test_client_history_follows_every_page(versioner_server_process) -> None:
    with VersionerClient(versioner_server_process.address) as client:
        for i in range(7):
            client.record("shop", f"2.{i}", "qa", "success")
        versions = [d.version for d in client.history("shop", page_size=2)]
        first = client.history_page("shop", page_size=2)
    assert versions == [f"2.{i}" for i in reversed(range(7))]
    assert len(first.deployments) == 2
    assert first.next_page_token


def test_client_errors_carry_the_reason(versioner_server_process) -> None:
    with VersionerClient(versioner_server_process.address) as client:
        client.record("shop", "3.0", "prod", "success", scm_sha="1234abcd")
        with pytest.raises(PreconditionFailed) as caught:
            client.record("shop", "3.0", "prod", "success", scm_sha="abcd1234")
    assert caught.value.reason == "VERSION_SHA_MISMATCH"


# --------------------------------------------------------------------------- watch


def test_watch_prints_one_line_per_event_and_exits_0_on_ctrl_c(versioner_server_process) -> None:
    server = versioner_server_process
    versioner(
        server.address, "record", *record_args(version="0.9"), "--status", "success",
        "--deployed-by", "ci",
    )  # fmt: skip
    watcher = subprocess.Popen(
        [sys.executable, "-m", "versioner_client.cli", "watch", "--after-revision", "0",
         "--address", server.address],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        result = versioner(
            server.address, "record", *record_args(version="1.0"), "--status", "started",
            "--deployed-by", "john.doe",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        lines = [watcher.stdout.readline(), watcher.stdout.readline()]
    finally:
        watcher.send_signal(signal.SIGINT)
        _, stderr = watcher.communicate(timeout=15)
    assert watcher.returncode == 0, stderr
    replayed, live = (line.split() for line in lines)
    assert replayed[1:] == ["#1", "completed", "shop", "0.9", "production", "by", "ci"]
    assert live[1:] == ["#2", "started", "shop", "1.0", "production", "by", "john.doe"]


def test_watch_json_filters_by_status(versioner_server_process) -> None:
    server = versioner_server_process
    for status in ("started", "failed", "success"):
        versioner(server.address, "record", *record_args(), "--status", status)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "versioner_client", "watch", "--after-revision", "0",
         "--status", "failure", "--json", "--address", server.address],
        env=cli_env(),
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        event = json.loads(watcher.stdout.readline())
    finally:
        watcher.send_signal(signal.SIGINT)
        watcher.communicate(timeout=15)
    assert event["status"] == "DEPLOYMENT_STATUS_FAILED"
    assert event["deployment"]["product_name"] == "shop"


def test_client_watch_resumes_across_a_restart_without_gaps_or_duplicates(
    versioner_server_process,
) -> None:
    server = versioner_server_process
    seen: list[pb.Event] = []
    reconnects: list[int] = []
    done = threading.Event()

    with VersionerClient(server.address) as watcher, VersionerClient(server.address) as writer:

        def follow() -> None:
            events = watcher.watch(
                product="shop", on_reconnect=lambda _e, _d, rev: reconnects.append(rev)
            )
            for event in events:
                seen.append(event)
                if len(seen) == 6:
                    break
            done.set()

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        time.sleep(1.0)  # let the watch settle on "from now on"
        for i in range(3):
            writer.record("shop", f"4.{i}", "production", "success")
        _wait_for(lambda: len(seen) >= 3)
        server.stop()
        server.start()
        for i in range(3, 6):
            writer.record("shop", f"4.{i}", "production", "success")
        assert done.wait(30), f"saw only {len(seen)} events"
    assert reconnects, "the watch never noticed the restart"
    assert [e.deployment.version for e in seen] == [f"4.{i}" for i in range(6)]
    revisions = [e.revision for e in seen]
    assert revisions == sorted(set(revisions))


def _wait_for(condition, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --------------------------------------------------------------------------- run


def test_run_records_started_then_completed(versioner_server_process, tmp_path: Path) -> None:
    server = versioner_server_process
    marker = tmp_path / "ran"
    result = versioner(
        server.address, "run", *record_args(version="5.0"), "--", "sh", "-c",
        f'echo deploying; touch "{marker}"',
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "deploying\n"  # the command's output, untouched
    assert marker.exists()
    [deployment] = history(server)
    assert deployment["status"] == "DEPLOYMENT_STATUS_COMPLETED"
    assert deployment["start_time"] and deployment["end_time"]


def test_run_records_failed_and_returns_the_exit_code(versioner_server_process) -> None:
    server = versioner_server_process
    result = versioner(
        server.address, "run", *record_args(version="5.1"), "--", "sh", "-c", "exit 3"
    )
    assert result.returncode == 3
    [deployment] = history(server)
    assert deployment["status"] == "DEPLOYMENT_STATUS_FAILED"


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_run_interrupted_relays_the_signal_and_records_aborted(
    versioner_server_process, signum: int, exit_code: int
) -> None:
    server = versioner_server_process
    runner = subprocess.Popen(
        [sys.executable, "-m", "versioner_client.cli", "run", *record_args(version="5.2"),
         "--address", server.address, "--", "sleep", "30"],
        env=cli_env(),
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        line = runner.stderr.readline()
        assert "started" in line, line
        time.sleep(0.3)  # let sleep start
        started = time.monotonic()
        runner.send_signal(signum)
        _, stderr = runner.communicate(timeout=20)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == exit_code, stderr
    assert time.monotonic() - started < 10  # the child was told, not waited out
    [deployment] = history(server)
    assert deployment["status"] == "DEPLOYMENT_STATUS_ABORTED"


def test_run_fails_open_and_still_runs_the_command(tmp_path: Path) -> None:
    unreachable = f"127.0.0.1:{free_port()}"
    marker = tmp_path / "ran"
    command = ["--", "sh", "-c", f'touch "{marker}"; exit 7']
    args = ["run", *record_args(), "--retries", "1"]
    closed = versioner(unreachable, *args, *command)
    assert closed.returncode == 1
    assert not marker.exists()  # without --fail-open an outage stops the deployment
    opened = versioner(unreachable, *args, "--fail-open", *command)
    assert opened.returncode == 7
    assert marker.exists()


def test_run_stops_before_the_command_when_rejected(
    versioner_server_process, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    result = versioner(
        versioner_server_process.address, "run", *record_args(product=""), "--fail-open",
        "--", "touch", str(marker),
    )  # fmt: skip
    assert result.returncode == 4
    assert not marker.exists()


# --------------------------------------------------------------------------- retries


def test_record_retried_across_a_server_restart_records_once(versioner_server_process) -> None:
    server = versioner_server_process
    server.stop()
    outcome: dict[str, object] = {}
    with VersionerClient(server.address, timeout=5, retries=8) as client:

        def call() -> None:
            try:
                outcome["response"] = client.record("shop", "6.0", "production", "success")
            except Exception as error:
                outcome["error"] = error

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.5)  # the first attempts fail: nobody listens
        server.start()
        thread.join(60)
        assert "error" not in outcome, outcome.get("error")
        response = outcome["response"]
        assert isinstance(response, pb.RecordEventResponse)
        deployments = list(client.history("shop"))
    assert [d.version for d in deployments] == ["6.0"]
    assert deployments[0].id == response.event.deployment.id


def test_a_retry_reuses_the_event_id(versioner_server_process) -> None:
    """What makes a retry safe: the same event_id is answered, never stored twice."""
    event_id = str(uuid.uuid4())
    with VersionerClient(versioner_server_process.address) as client:
        first = client.record("shop", "7.0", "production", "started", event_id=event_id)
        replay = client.record("shop", "7.0", "production", "started", event_id=event_id)
        assert len(list(client.history("shop"))) == 1
    assert not first.duplicate
    assert replay.duplicate
    assert replay.event.deployment.id == first.event.deployment.id
