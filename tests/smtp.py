"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives and counts connections and logins."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Literal

from aiosmtpd.controller import Controller


class Inbox:
    """aiosmtpd handler: every accepted message, parsed; ``refuse`` lists recipients answered with 550."""

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.refuse = refuse
        self.connections = 0  # TCP connections accepted, whether or not TLS and SMTP follow
        self.auth_attempts = 0  # AUTH commands, successful or not

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(message_from_bytes(envelope.original_content or envelope.content, policy=policy.default))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


class _CountingController(Controller):
    """Counts each accepted connection: ``factory`` runs once per connection, before any TLS handshake."""

    def factory(self):
        self.handler.connections += 1
        return super().factory()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Certificates:
    """A private CA (``ca``) and a server certificate it signed for 127.0.0.1 and localhost (``cert``, ``key``)."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(folder: Path) -> Certificates:
    """Write a private CA and a server certificate signed by it (EC P-256, valid for a day) into ``folder``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: str, issuer_key, *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        else:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                            critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("featureaudit test CA", ca_key, "featureaudit test CA", ca_key, ca=True)
    server_cert = certificate("127.0.0.1", server_key, "featureaudit test CA", ca_key, ca=False)
    certs = Certificates(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server-key.pem")
    certs.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    certs.cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    certs.key.write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    return certs


@contextmanager
def smtp_server(
    user: str | None = None,
    password: str | None = None,
    *,
    tls: Literal["starttls", "ssl"] | None = None,
    certs: Certificates | None = None,
    refuse: tuple[str, ...] = (),
) -> Iterator[tuple[Inbox, int]]:
    """Start aiosmtpd on 127.0.0.1 and a free port; with ``user``, require that login (AUTH without TLS);
    with ``tls``, offer STARTTLS or speak implicit TLS with ``certs``' server certificate."""
    from aiosmtpd.smtp import AuthResult

    inbox, port = Inbox(refuse), free_port()

    def authenticate(server, session, envelope, mechanism, auth_data):
        inbox.auth_attempts += 1
        ok = auth_data.login.decode() == user and auth_data.password.decode() == password
        return AuthResult(success=ok, handled=False)

    extra: dict = {"authenticator": authenticate, "auth_required": True, "auth_require_tls": False} if user else {}
    if tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certs.cert, certs.key)
        extra["tls_context" if tls == "starttls" else "ssl_context"] = context
    controller = _CountingController(inbox, hostname="127.0.0.1", port=port, **extra)
    controller.start()
    inbox.connections = 0  # start() connects once itself to see that the server answers
    try:
        yield inbox, port
    finally:
        controller.stop()
