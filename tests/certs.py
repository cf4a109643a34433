"""Throw-away certificates for the TLS tests, made with the openssl command line at test time."""

from __future__ import annotations

import subprocess
from pathlib import Path

SERVER_NAMES = "subjectAltName=IP:127.0.0.1,DNS:localhost"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key_and_request(name: str, cn: str, cwd: Path) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=cwd)


def _signed(name: str, ca: str, extensions: str, cwd: Path) -> None:
    (cwd / f"{name}.ext").write_text(extensions + "\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=cwd)


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA;
    and a second CA that signed nothing the server trusts."""
    directory.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2", "-subj", f"/CN=weldstream test {ca}",
                 cwd=directory)
    _key_and_request("server", "localhost", directory)
    _signed("server", "ca", SERVER_NAMES + "\nextendedKeyUsage=serverAuth", directory)
    _key_and_request("client", "rig-7", directory)
    _signed("client", "ca", "extendedKeyUsage=clientAuth", directory)
    _key_and_request("stranger", "stranger", directory)
    _signed("stranger", "other-ca", "extendedKeyUsage=clientAuth", directory)
    return {name: directory / name for name in (
        "ca.crt", "server.crt", "server.key", "client.crt", "client.key", "stranger.crt", "stranger.key")}
