"""A secured redis-server for the tests: `requirepass`, an ACL user, TLS with a test CA.

The CA, the server's and a client's certificates are made here with `cryptography`; the server
(Debian's `redis-server`, built with TLS) listens on a plain port (password and ACL user) and a
TLS port that requires a client certificate of the CA (mutual TLS).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from infra.processes import free_port, spawn, stop

ACL_USER = "streamrec"
ACL_RULES = "on ~* &* +@all -@dangerous +info"
"""The application user: every key and channel, every command but the dangerous ones
(FLUSHALL, KEYS, CONFIG, ...); INFO is allowed back for the probes."""


@dataclass(frozen=True)
class SecuredRedis:
    """URLs of the secured server, one per way in."""

    password_url: str
    """The default user with the `requirepass` password (plain TCP)."""
    acl_url: str
    """The ACL user (plain TCP)."""
    tls_url: str
    """The ACL user over mutual TLS (`rediss://`, the test CA, a client certificate)."""
    no_auth_url: str
    """The plain port without credentials (refused with NOAUTH)."""
    ca: Path
    """The test CA's certificate."""

    def all(self) -> dict[str, str]:
        """The authenticated URLs by name."""
        return {"password": self.password_url, "acl": self.acl_url, "tls": self.tls_url}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_certificates(directory: Path) -> None:
    """`ca.crt`, `server.crt/.key` (127.0.0.1, localhost), `client.crt/.key` in `directory`."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("streamrec test CA"))
        .issuer_name(_name("streamrec test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory / "ca", ca_key, ca)
    for name, usage, names in (
        (
            "server",
            ExtendedKeyUsageOID.SERVER_AUTH,
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        ),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("streamrec-client")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"streamrec test {name}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(directory / name, key, cert)


def start(directory: Path) -> tuple[SecuredRedis, subprocess.Popen]:
    """Start the secured server; returns its URLs and its process (stop it with `stop`)."""
    make_certificates(directory)
    password = f"p@ss/{secrets.token_hex(8)}"  # characters a URL must percent-encode
    acl_password = secrets.token_hex(12)
    plain, tls = free_port(), free_port()
    (directory / "redis.conf").write_text(
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {plain}",
                f"tls-port {tls}",
                f"tls-cert-file {directory / 'server.crt'}",
                f"tls-key-file {directory / 'server.key'}",
                f"tls-ca-cert-file {directory / 'ca.crt'}",
                "tls-auth-clients yes",
                'save ""',
                "appendonly no",
                f"dir {directory}",
                f'requirepass "{password}"',
                f"user {ACL_USER} {ACL_RULES} >{acl_password}",
                "",
            ]
        )
    )
    proc = spawn(["redis-server", str(directory / "redis.conf")], directory / "redis.log")
    admin = redis.Redis("127.0.0.1", plain, password=password, socket_timeout=2)
    try:
        for _ in range(100):
            try:
                admin.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None:
                    raise RuntimeError((directory / "redis.log").read_text()[-2000:]) from None
                time.sleep(0.05)  # polling the condition: the server answers
    finally:
        admin.close()
    tls_options = (
        f"ssl_ca_certs={directory / 'ca.crt'}&ssl_certfile={directory / 'client.crt'}"
        f"&ssl_keyfile={directory / 'client.key'}"
    )
    urls = SecuredRedis(
        password_url=f"redis://:{quote(password, safe='')}@127.0.0.1:{plain}/0",
        acl_url=f"redis://{ACL_USER}:{acl_password}@127.0.0.1:{plain}/0",
        tls_url=f"rediss://{ACL_USER}:{acl_password}@127.0.0.1:{tls}/0?{tls_options}",
        no_auth_url=f"redis://127.0.0.1:{plain}/0",
        ca=directory / "ca.crt",
    )
    return urls, proc


__all__ = ["SecuredRedis", "make_certificates", "start", "stop"]
