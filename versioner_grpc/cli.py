"""`versioner-server` and `python -m versioner_grpc`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from versioner_grpc import config, logs
from versioner_grpc.server import serve


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config.parse(argv)
    logs.configure(cfg.log_level)
    try:
        asyncio.run(serve(cfg))
    except (OSError, ValueError) as exc:
        print(f"versioner-server: {exc}", file=sys.stderr)
        return 1
    return 0
