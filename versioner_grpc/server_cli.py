"""`versioner-server` and `python -m versioner_grpc`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from versioner_grpc import auth, config, logs
from versioner_grpc.server import serve


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["token"]:
        return token_command(args[1:])
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
