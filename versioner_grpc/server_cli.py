"""`versioner-server` and `python -m versioner_grpc`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from versioner_grpc import auth, config, logs
from versioner_grpc.governance import rules
from versioner_grpc.server import serve


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        return token_command(args[1:])
    if args[:1] == ["rules"]:
        return rules_command(args[1:])
    cfg = config.parse(args)
    logs.configure(cfg.log_level)
    try:
        asyncio.run(serve(cfg))
    except (OSError, ValueError) as exc:
        print(f"versioner-server: {exc}", file=sys.stderr)
        return 1
    return 0


def token_command(argv: list[str]) -> int:
    """`versioner-server token create --name ci --scope deployments:write`."""
    parser = argparse.ArgumentParser(
        prog="versioner-server token",
        description="Issue API tokens. The token is printed once; only its SHA-256 hash is "
        "stored. Revoke a token by deleting its [[token]] table and sending the server SIGHUP.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="issue a new token")
    create.add_argument("--name", required=True, help="who or what uses it (e.g. ci)")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        choices=auth.SCOPES,
        help="repeat for several scopes",
    )
    create.add_argument(
        "--auth-file",
        default=os.environ.get("VERSIONER_AUTH_FILE", "versioner-tokens.toml"),
        help="the server's --auth-file [VERSIONER_AUTH_FILE; default: versioner-tokens.toml]",
    )
    args = parser.parse_args(argv)
    try:
        token = auth.create_token(args.auth_file, args.name, args.scope)
    except (OSError, ValueError) as exc:
        print(f"versioner-server token: {exc}", file=sys.stderr)
        return 1
    print(token)
    print(
        f"token {args.name!r} ({', '.join(args.scope)}) added to {args.auth_file}; "
        "this is the only time it is shown. Send the server SIGHUP to load it.",
        file=sys.stderr,
    )
    return 0


def rules_command(argv: list[str]) -> int:
    """`versioner-server rules check FILE`: validate a rules file, list its rules."""
    parser = argparse.ArgumentParser(
        prog="versioner-server rules",
        description="Deployment rules (--rules-file). Exit 0 when the file is valid, 1 if not.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate a rules file")
    check.add_argument("file", help="the TOML rules file")
    args = parser.parse_args(argv)
    try:
        loaded = rules.load(args.file)
    except rules.RulesError as exc:
        print(f"versioner-server rules: {exc}", file=sys.stderr)
        return 1
    for rule in loaded.rules:
        scope = []
        if rule.scope.environments:
            scope.append("environments " + ", ".join(rule.scope.environments))
        if rule.scope.environment_types:
            scope.append(
                "types " + ", ".join(sorted(t.name.lower() for t in rule.scope.environment_types))
            )
        if rule.scope.products:
            scope.append("products " + ", ".join(rule.scope.products))
        print(f"{rule.name}: {rule.kind}, {rule.mode}; {'; '.join(scope) or 'everywhere'}")
    print(f"{args.file}: {len(loaded)} rule(s) OK (sha256 {loaded.sha256[:12]})", file=sys.stderr)
    return 0
