"""The transport and credentials a process uses, from the exchange configuration: what servers accept
(server credentials + token verifier) and what clients present (channel credentials + their token).

Every service main calls `rpc.configure(process_security(config, "<its principal>"))` once; after that
`rpc.start_server` authenticates every call and `rpc.channel` attaches the process's own token.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.auth import Credentials, TokenVerifier, ensure_credentials, load_credentials, locked
from services.common.config import ExchangeConfig


@dataclass(frozen=True)
class Security:
    transport: str  # "local" | "tls"
    verifier: TokenVerifier
    token: str  # what this process presents when it calls others ("" = nothing)
    credentials: Credentials
    tls_ca: bytes = b""
    tls_cert: bytes = b""
    tls_key: bytes = b""

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.transport == "tls":
            return grpc.ssl_server_credentials([(self.tls_key, self.tls_cert)])
        return grpc.local_server_credentials(grpc.LocalConnectionType.LOCAL_TCP)

    def channel_credentials(self, token: str | None = None) -> grpc.ChannelCredentials:
        base = (
            grpc.ssl_channel_credentials(root_certificates=self.tls_ca)
            if self.transport == "tls"
            else grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
        )
        token = self.token if token is None else token
        if not token:
            return base
        return grpc.composite_channel_credentials(base, grpc.access_token_call_credentials(token))

    def as_principal(self, name: str) -> Security:
        """The same transport, presenting principal `name`'s token (tests, tools)."""
        return Security(
            self.transport,
            self.verifier,
            self.credentials.token(name),
            self.credentials,
            self.tls_ca,
            self.tls_cert,
            self.tls_key,
        )


def accounts_sources(config: ExchangeConfig) -> list[str]:
    return config.accounts_sources()


def process_security(config: ExchangeConfig, principal: str, *, create: bool = True) -> Security:
    """Security of a process acting as `principal` (generates credentials and TLS files on first run
    when `create`; clients such as the CLI pass create=False and need an exchange that ran once)."""
    path = config.credentials_path()
    creds = ensure_credentials(path, accounts_sources(config)) if create else load_credentials(path)
    sec = config.security
    ca = cert = key = b""
    if sec.transport == "tls":
        tls_dir = config.data_dir / "secrets" / "tls"
        ca_path = config.path_of(sec.tls_ca) if sec.tls_ca else tls_dir / "ca.pem"
        cert_path = config.path_of(sec.tls_cert) if sec.tls_cert else tls_dir / "server.pem"
        key_path = config.path_of(sec.tls_key) if sec.tls_key else tls_dir / "server.key"
        if not (sec.tls_ca or sec.tls_cert or sec.tls_key) and create and not key_path.exists():
            tls_dir.mkdir(parents=True, exist_ok=True)
            with locked(tls_dir):
                if not key_path.exists():
                    generate_tls(tls_dir, list(sec.tls_hosts))
        ca, cert = ca_path.read_bytes(), cert_path.read_bytes()
        key = key_path.read_bytes() if key_path.exists() else b""
    token = creds.token(principal) if principal else ""
    return Security(sec.transport, creds.verifier(), token, creds, ca, cert, key)


def generate_tls(folder: Path, hosts: list[str], *, days: int = 3650) -> None:
    """A private CA and a server certificate for `hosts` (IP addresses or DNS names), PEM files
    ca.pem, server.pem and server.key (0600) in `folder`. Written atomically (concurrent starts)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "exchange local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "exchange")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "ca.pem": ca_cert.public_bytes(pem),
        "server.pem": cert.public_bytes(pem),
        "server.key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    }
    for name, data in files.items():
        tmp = folder / f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, folder / name)
