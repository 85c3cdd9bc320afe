"""Subscription secrets at rest: Fernet-encrypted when a key is configured.

With --secrets-key (or VERSIONER_SECRETS_KEY) a database dump alone does not
reveal the secrets; without it they are stored in clear (marked "plain:"), and
the README says so. A secret sealed with a key stays readable only with it.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

PLAIN = "plain:"
FERNET = "fernet:"


class SecretUnavailable(Exception):
    """The stored secret cannot be opened (no key, or another key)."""


class SecretBox:
    def __init__(self, key: str = "") -> None:
        """`key`: a Fernet key (32 url-safe base64 bytes, `Fernet.generate_key()`)."""
        try:
            self._fernet = Fernet(key.encode()) if key else None
        except ValueError as exc:
            raise ValueError(
                "--secrets-key must be a Fernet key: 32 url-safe base64-encoded bytes "
                '(python -c "from cryptography.fernet import Fernet; '
                'print(Fernet.generate_key().decode())")'
            ) from exc

    @property
    def encrypts(self) -> bool:
        return self._fernet is not None

    def seal(self, secret: str) -> str:
        if not secret:
            return ""
        if self._fernet is None:
            return PLAIN + secret
        return FERNET + self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        if not sealed:
            return ""
        if sealed.startswith(PLAIN):
            return sealed[len(PLAIN) :]
        if self._fernet is None:
            raise SecretUnavailable("the secret is encrypted: start the server with --secrets-key")
        try:
            return self._fernet.decrypt(sealed[len(FERNET) :].encode()).decode()
        except InvalidToken as exc:
            raise SecretUnavailable("the secret was encrypted with another --secrets-key") from exc
