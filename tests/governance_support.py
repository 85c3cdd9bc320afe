"""Shared setup for the governance tests: a server with an auth file and a rules file.

Tokens come from `versioner-server token create` (its entry point, in process), so
the scopes the tests use are the ones the token tooling issues.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from versioner.v1 import deployment_service_pb2 as pb
from versioner.v1 import governance_service_pb2 as gpb
from versioner.v1 import governance_service_pb2_grpc as gpb_grpc

from tests.conftest import RunningServer, start_server
from versioner_grpc import server_cli
from versioner_grpc.config import Config

TIMEOUT = 10
PRINCIPALS = {
    "ci": ["deployments:read", "deployments:write"],
    "alice": ["deployments:read", "deployments:write", "deployments:approve"],
    "bob": ["deployments:read", "deployments:approve"],
    "carol": ["deployments:read", "deployments:approve"],
    "oncall": ["deployments:read", "deployments:write", "deployments:override"],
}


def create_token(auth_file: Path, name: str, scopes: list[str]) -> str:
    out = io.StringIO()
    args = ["token", "create", "--name", name, "--auth-file", str(auth_file)]
    for scope in scopes:
        args += ["--scope", scope]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert server_cli.main(args) == 0
    return out.getvalue().strip()


class Governed:
    """A running server with rules and tokens, and calls as each principal."""

    def __init__(self, config: Config, directory: Path, rules: str) -> None:
        self.directory = directory
        self.auth_file = directory / "tokens.toml"
        self.tokens = {n: create_token(self.auth_file, n, s) for n, s in PRINCIPALS.items()}
        self.rules_file = directory / "rules.toml"
        self.rules_file.write_text(rules)
        self.config = config
        self.running = start_server(
            config, auth_file=str(self.auth_file), rules_file=str(self.rules_file)
        )
        self.stub = self.running.stub
        self.gov = gpb_grpc.GovernanceServiceStub(self.running.channel)

    def stop(self) -> None:
        self.running.stop()

    def auth(self, who: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[who]}"),)

    def record(self, who: str = "ci", **fields: object) -> pb.RecordEventResponse:
        values: dict[str, object] = {
            "product_name": "shop",
            "version": "1.0.0",
            "environment_name": "production",
            "status": pb.DEPLOYMENT_STATUS_STARTED,
        }
        values.update(fields)
        return self.stub.RecordEvent(
            pb.RecordEventRequest(**values), metadata=self.auth(who), timeout=TIMEOUT
        )

    def request_approval(self, who: str = "ci", **fields: str) -> gpb.Approval:
        values = {"product_name": "shop", "version": "1.0.0", "environment_name": "production"}
        values.update(fields)
        response = self.gov.RequestApproval(
            gpb.RequestApprovalRequest(**values), metadata=self.auth(who), timeout=TIMEOUT
        )
        return response.approval

    def approve(self, who: str, approval_id: str, comment: str = "") -> gpb.Approval:
        return self.gov.Approve(
            gpb.ApproveRequest(approval_id=approval_id, comment=comment),
            metadata=self.auth(who),
            timeout=TIMEOUT,
        ).approval

    def reject(self, who: str, approval_id: str, comment: str = "") -> gpb.Approval:
        return self.gov.Reject(
            gpb.RejectRequest(approval_id=approval_id, comment=comment),
            metadata=self.auth(who),
            timeout=TIMEOUT,
        ).approval

    def check(self, **fields: str) -> gpb.CheckRulesResponse:
        values = {"product_name": "shop", "version": "1.0.0", "environment_name": "production"}
        values.update(fields)
        return self.gov.CheckRules(
            gpb.CheckRulesRequest(**values), metadata=self.auth("ci"), timeout=TIMEOUT
        )

    def audit(self, *kinds: str) -> list[gpb.AuditEntry]:
        response = self.gov.ListAudit(
            gpb.ListAuditRequest(kinds=list(kinds), page_size=1000),
            metadata=self.auth("ci"),
            timeout=TIMEOUT,
        )
        return list(response.entries)

    def history(self) -> list[pb.Deployment]:
        response = self.stub.ListHistory(
            pb.ListHistoryRequest(page_size=1000), metadata=self.auth("ci"), timeout=TIMEOUT
        )
        return list(response.deployments)

    def reload(self, rules: str) -> bool:
        self.rules_file.write_text(rules)
        return bool(self.running.run(self.running.server.reload_rules()))


def error_info(exc: grpc.RpcError) -> error_details_pb2.ErrorInfo:
    """The google.rpc.ErrorInfo of a FAILED_PRECONDITION."""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError("no ErrorInfo in the status")


def refused(call: object) -> tuple[grpc.StatusCode, error_details_pb2.ErrorInfo | None]:
    """Run `call` (a no-argument callable) expecting an error: its code and ErrorInfo."""
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        code = exc.code()  # type: ignore[attr-defined]
        info = error_info(exc) if code == grpc.StatusCode.FAILED_PRECONDITION else None
        return code, info
    raise AssertionError("the call succeeded")


def start_governed(config: Config, directory: Path, rules: str) -> Governed:
    return Governed(config, directory, rules)


__all__ = ["TIMEOUT", "Governed", "RunningServer", "error_info", "refused", "start_governed"]
