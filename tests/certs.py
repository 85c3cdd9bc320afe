"""Test certificates made with the `openssl` CLI: a CA, a server cert, client certs.

Nothing here is trusted outside the test that made it: every file lives in the
test's tmp_path.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL = "openssl"


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(
        [OPENSSL, *map(str, args)],
        cwd=cwd,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=60,
    )


@dataclass(frozen=True)
class Pki:
    """Paths of the generated PEM files."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def read(self, name: str) -> bytes:
        """The bytes of one of the files above, by attribute name (e.g. "ca_cert")."""
        return getattr(self, name).read_bytes()


def make_ca(directory: Path, name: str = "ca") -> tuple[Path, Path]:
    """A self-signed CA: (cert, key)."""
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key, "-out", cert, "-days", "2",
        "-subj", f"/CN=Versioner test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert, key


def issue(
    directory: Path,
    name: str,
    ca: tuple[Path, Path],
    *,
    extensions: str,
) -> tuple[Path, Path]:
    """A leaf certificate signed by `ca`: (cert, key)."""
    cert, key, csr = (directory / f"{name}{suffix}.pem" for suffix in ("", "-key", "-csr"))
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", "-sha256", "-extfile", ext,
        cwd=directory,
    )  # fmt: skip
    return cert, key


SERVER_EXTENSIONS = (
    "basicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=serverAuth\n"
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
)
CLIENT_EXTENSIONS = (
    "basicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=clientAuth\n"
)


def make_pki(directory: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all from the CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca(directory)
    server = issue(directory, "server", ca, extensions=SERVER_EXTENSIONS)
    client = issue(directory, "client", ca, extensions=CLIENT_EXTENSIONS)
    return Pki(directory, *ca, *server, *client)
