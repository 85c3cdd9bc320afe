"""Where and how the CLI connects: flags, then VERSIONER_* variables, then defaults."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from versioner_client.client import DEFAULT_ADDRESS, VersionerClient
from versioner_client.inputs import UsageError, parse_bool


@dataclass(frozen=True)
class Settings:
    """Where and how to connect, resolved from flags, then VERSIONER_* vars, then defaults."""

    address: str = DEFAULT_ADDRESS
    token: str | None = None
    tls: bool = False
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    timeout: float = 10.0
    retries: int = 5
    fail_open: bool = False

    def client(self) -> VersionerClient:
        """A client for these settings (TLS files are read now: a bad path is a usage error)."""
        try:
            return VersionerClient(
                self.address,
                token=self.token,
                tls=self.tls,
                root_certificates=self.ca_cert,
                client_cert=self.client_cert,
                client_key=self.client_key,
                timeout=self.timeout,
                retries=self.retries,
            )
        except OSError as error:
            raise UsageError(f"cannot read TLS file: {error}") from None


def resolve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Settings from parsed flags (absent when not given) over VERSIONER_* variables."""

    def pick(attr: str, var: str) -> str | None:
        value: str | None = getattr(args, attr, None)
        if value is not None:
            return value
        return env.get(var) or None

    def number(attr: str, var: str, kind: type[float] | type[int], default: float) -> Any:
        value = getattr(args, attr, None)
        if value is not None:
            return value
        text = env.get(var)
        if not text:
            return default
        try:
            return kind(text)
        except ValueError:
            raise UsageError(f"{var} must be a number, not {text!r}") from None

    tls = getattr(args, "tls", None)
    fail_open = getattr(args, "fail_open", None)
    settings = Settings(
        address=pick("address", "VERSIONER_ADDRESS") or DEFAULT_ADDRESS,
        token=pick("token", "VERSIONER_TOKEN"),
        tls=tls if tls is not None else parse_bool("VERSIONER_TLS", env.get("VERSIONER_TLS", "")),
        ca_cert=pick("ca_cert", "VERSIONER_CA_CERT"),
        client_cert=pick("client_cert", "VERSIONER_CLIENT_CERT"),
        client_key=pick("client_key", "VERSIONER_CLIENT_KEY"),
        timeout=number("timeout", "VERSIONER_TIMEOUT", float, 10.0),
        retries=number("retries", "VERSIONER_RETRIES", int, 5),
        fail_open=fail_open
        if fail_open is not None
        else parse_bool("VERSIONER_FAIL_OPEN", env.get("VERSIONER_FAIL_OPEN", "")),
    )
    if settings.timeout <= 0:
        raise UsageError("--timeout must be positive")
    if settings.retries < 0:
        raise UsageError("--retries must not be negative")
    return settings
