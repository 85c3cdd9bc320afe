"""Governance commands of `versioner`: approvals, the rules preflight, the audit trail.

    versioner approvals request --product P --version V --env E [--reason R]
    versioner approvals approve ID [--comment C]      (scope deployments:approve)
    versioner approvals reject ID [--comment C]
    versioner approvals list [--product P] [--env E] [--state pending]
    versioner approvals show ID [--wait 30s]
    versioner check --product P --version V --env E   (exit 0 allowed, 5 blocked)
    versioner audit [--since 7d] [--principal NAME] [--kind deployment.blocked]

`versioner run --wait-for-approval[=TIMEOUT]` uses `wait_for_approval` below: it
requests an approval when a rule needs one, prints its id, long-polls the server
(which answers as soon as the request is decided) and returns 0 to go ahead or 5
when the request is rejected, expires or the wait times out.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from versioner.v1 import governance_service_pb2 as gpb

from versioner_client.client import VersionerClient
from versioner_client.exits import EXIT_CONFLICT, EXIT_OK
from versioner_client.inputs import parse_since

if TYPE_CHECKING:
    from versioner_client.settings import Settings

EXIT_BLOCKED = EXIT_CONFLICT  # a rule blocks the deployment
DEFAULT_WAIT = "1h"
_DURATION = re.compile(r"(\d+)\s*([smhd])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
STATES = {
    "pending": gpb.APPROVAL_STATE_PENDING,
    "approved": gpb.APPROVAL_STATE_APPROVED,
    "rejected": gpb.APPROVAL_STATE_REJECTED,
    "expired": gpb.APPROVAL_STATE_EXPIRED,
    "cancelled": gpb.APPROVAL_STATE_CANCELLED,
}
STATE_WORD = {number: word for word, number in STATES.items()}
OUTCOME_WORD = {
    gpb.RULE_OUTCOME_PASS: "pass",
    gpb.RULE_OUTCOME_BLOCK: "BLOCK",
    gpb.RULE_OUTCOME_REPORT: "report",
}


def parse_wait(text: str) -> float:
    """Seconds from "90s", "30m", "1h30m", "2d" or a plain number of seconds."""
    compact = text.strip().lower().replace(" ", "")
    try:
        seconds = float(compact)
    except ValueError:
        if not compact or _DURATION.sub("", compact):
            raise argparse.ArgumentTypeError(
                f"wants a duration like 90s, 30m or 1h, not {text!r}"
            ) from None
        seconds = sum(int(n) * _SECONDS[u] for n, u in _DURATION.findall(compact))
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return seconds


def _err(line: str) -> None:
    print(f"versioner: {line}", file=sys.stderr, flush=True)


def _time(message: Any, field: str) -> str:
    if not message.HasField(field):
        return "-"
    when: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return when.strftime("%Y-%m-%d %H:%M:%SZ")


def format_approval(a: gpb.Approval) -> list[str]:
    approvals = sum(1 for d in a.decisions if d.decision == gpb.APPROVAL_DECISION_KIND_APPROVE)
    lines = [
        f"approval {a.id}: {STATE_WORD.get(a.state, '?')}",
        f"  {a.product_name} {a.version} to {a.environment_name}",
        f"  requested by {a.requested_by} at {_time(a, 'create_time')}"
        + (f": {a.reason}" if a.reason else ""),
        f"  approvals {approvals}/{a.required_approvals}, expires {_time(a, 'expire_time')}",
    ]
    for d in a.decisions:
        word = "approved" if d.decision == gpb.APPROVAL_DECISION_KIND_APPROVE else "rejected"
        comment = f": {d.comment}" if d.comment else ""
        lines.append(f"  {word} by {d.principal} at {_time(d, 'time')}{comment}")
    return lines


def who_may_approve(a: gpb.Approval) -> str:
    if a.allow_self_approval:
        return "any token with the deployments:approve scope"
    return f"any token with the deployments:approve scope other than {a.requested_by!r}"


# ------------------------------------------------------------------ commands


def cmd_request(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    with settings.client() as client:
        response = client.request_approval(
            args.product, args.version, args.environment, args.reason
        )
    a = response.approval
    print(a.id)
    state = "requested" if response.created else "already open"
    _err(f"approval {a.id} {state}; approvers: {who_may_approve(a)}")
    return EXIT_OK


def _decide(args: argparse.Namespace, settings: Settings, approve: bool) -> int:
    with settings.client() as client:
        if approve:
            a = client.approve(args.approval_id, args.comment)
        else:
            a = client.reject(args.approval_id, args.comment)
    print("\n".join(format_approval(a)))
    return EXIT_OK


def cmd_approve(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    return _decide(args, settings, approve=True)


def cmd_reject(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    return _decide(args, settings, approve=False)


def cmd_show(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    with settings.client() as client:
        if args.wait:
            a = client.wait_for_approval(args.approval_id, args.wait)
        else:
            a = client.get_approval(args.approval_id)
    print("\n".join(format_approval(a)))
    return EXIT_OK


def cmd_list(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    states = [STATES[s] for s in args.state or ()]
    rows: list[gpb.Approval] = []
    with settings.client() as client:
        token = ""
        while len(rows) < args.limit:
            page = client.list_approvals(
                args.product,
                args.environment,
                states,
                page_size=min(args.limit - len(rows), 1000),
                page_token=token,
            )
            rows.extend(page.approvals)
            token = page.next_page_token
            if not token:
                break
    if not rows:
        print("no approval requests match", file=sys.stderr)
        return EXIT_OK
    print("ID                                STATE     PRODUCT / VERSION / ENVIRONMENT  BY")
    for a in rows:
        where = f"{a.product_name} {a.version} {a.environment_name}"
        print(f"{a.id:<33} {STATE_WORD.get(a.state, '?'):<9} {where:<32} {a.requested_by}")
    return EXIT_OK


def format_check(response: gpb.CheckRulesResponse) -> list[str]:
    lines = []
    for r in response.results:
        line = f"{OUTCOME_WORD.get(r.outcome, '?'):<6} {r.rule_name} ({r.kind}, {r.mode})"
        if r.message:
            line += f": {r.message}"
        lines.append(line)
    if not lines:
        lines.append("no rule applies")
    return lines


def cmd_check(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    with settings.client() as client:
        response = client.check_rules(
            args.product, args.version, args.environment, args.deployment_id
        )
    print("\n".join(format_check(response)))
    if response.allowed:
        return EXIT_OK
    blocking = next(r for r in response.results if r.outcome == gpb.RULE_OUTCOME_BLOCK)
    _err(f"blocked by rule {blocking.rule_name!r} ({blocking.reason}): {blocking.message}")
    return EXIT_BLOCKED


def cmd_audit(args: argparse.Namespace, settings: Settings, env: Mapping[str, str]) -> int:
    since = parse_since(args.since) if args.since else None
    entries: list[gpb.AuditEntry] = []
    with settings.client() as client:
        token = ""
        while len(entries) < args.limit:
            page = client.audit_page(
                since=since,
                principal=args.principal,
                kinds=args.kind or (),
                page_size=min(args.limit - len(entries), 1000),
                page_token=token,
            )
            entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                break
    for e in entries:
        where = " ".join(x for x in (e.product_name, e.version, e.environment_name) if x)
        extra = e.rule_name or e.approval_id
        parts = [f"#{e.id}", _time(e, "time"), e.kind, e.principal or "-", where, extra]
        print("  ".join(p for p in parts if p))
    if not entries:
        print("no audit entries match", file=sys.stderr)
    return EXIT_OK


def wait_for_approval(
    client: VersionerClient,
    product: str,
    version: str,
    environment: str,
    deployment_id: str,
    timeout: float,
    reason: str = "",
) -> int:
    """Before `run` records STARTED: 0 to go ahead, 5 when it must not run."""
    check = client.check_rules(product, version, environment, deployment_id)
    if check.allowed:
        return EXIT_OK
    blocking = [r for r in check.results if r.outcome == gpb.RULE_OUTCOME_BLOCK]
    others = [r for r in blocking if r.kind != "approval"]
    if others:
        r = others[0]
        _err(f"blocked by rule {r.rule_name!r} ({r.reason}): {r.message}")
        return EXIT_BLOCKED
    response = client.request_approval(product, version, environment, reason)
    a = response.approval
    _err(
        f"approval {a.id} {'requested' if response.created else 'pending'} for {product} "
        f"{version} to {environment} (rules: {', '.join(check.approval_rules)}); "
        f"approvers: {who_may_approve(a)}: versioner approvals approve {a.id}"
    )
    print(a.id, flush=True)
    a = client.wait_for_approval(a.id, timeout)
    if a.state == gpb.APPROVAL_STATE_APPROVED:
        _err(f"approval {a.id} approved; running")
        return EXIT_OK
    if a.state == gpb.APPROVAL_STATE_PENDING:
        _err(f"approval {a.id} still pending after {timeout:g}s: not running the command")
    else:
        word = STATE_WORD.get(a.state, "closed")
        _err(f"approval {a.id} {word}: not running the command")
    return EXIT_BLOCKED


# ------------------------------------------------------------------ parsers


def add_parsers(sub: Any, parents: Sequence[argparse.ArgumentParser], epilog: str = "") -> None:
    """Add `approvals`, `check` and `audit` to the `versioner` subcommands."""
    formatter = argparse.RawDescriptionHelpFormatter

    def add(group: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = group.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=epilog,
            formatter_class=formatter,
            parents=list(parents),
        )
        return parser

    def target(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--product", required=True, help="product name")
        parser.add_argument("--version", required=True, help="version")
        parser.add_argument(
            "--env", "--environment", dest="environment", required=True, help="environment"
        )

    approvals = sub.add_parser(
        "approvals",
        help="request, approve, reject and list deployment approvals",
        description="Deployment approvals (rules of kind approval).",
    )
    group = approvals.add_subparsers(dest="approvals_command", required=True, metavar="ACTION")
    request = add(group, "request", "open an approval request (prints its id)")
    target(request)
    request.add_argument("--reason", default="", help="why, for the approvers")
    request.set_defaults(handler=cmd_request)
    for name, handler, text in (
        ("approve", cmd_approve, "approve a request (scope deployments:approve)"),
        ("reject", cmd_reject, "reject a request (scope deployments:approve)"),
    ):
        decide = add(group, name, text)
        decide.add_argument("approval_id", help="the request's id")
        decide.add_argument("--comment", default="", help="why")
        decide.set_defaults(handler=handler)
    show = add(group, "show", "one request with its decisions")
    show.add_argument("approval_id", help="the request's id")
    show.add_argument(
        "--wait", type=parse_wait, help="while pending, wait up to this long for a decision"
    )
    show.set_defaults(handler=cmd_show)
    listing = add(group, "list", "approval requests, newest first")
    listing.add_argument("--product", default="", help="only this product")
    listing.add_argument("--env", "--environment", dest="environment", default="")
    listing.add_argument("--state", action="append", choices=sorted(STATES), help="repeatable")
    listing.add_argument("--limit", type=int, default=50, help="at most N (default 50)")
    listing.set_defaults(handler=cmd_list)

    check = add(sub, "check", "would the rules let this deployment start now? (exit 0 / 5)")
    target(check)
    check.add_argument("--deployment-id", default="", help="an existing (e.g. PENDING) deployment")
    check.set_defaults(handler=cmd_check)

    audit = add(sub, "audit", "the governance audit trail, oldest first")
    audit.add_argument("--since", help="7d, 24h, 30m or an ISO 8601 time")
    audit.add_argument("--principal", default="", help="only this token name")
    audit.add_argument("--kind", action="append", help="e.g. deployment.blocked (repeatable)")
    audit.add_argument("--limit", type=int, default=100, help="at most N (default 100)")
    audit.set_defaults(handler=cmd_audit)
