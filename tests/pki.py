"""A small test PKI made with ``cryptography``: a CA, the certificates of the people who sign a report, and a timestamp
authority's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Identity:
    """A signer's key and certificate as PEM files on disk."""

    name: str
    key: Path
    cert: Path
    password: str | None = None


def _name(common_name: str, organization: str = "featureaudit tests") -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(folder: Path, stem: str, key, cert: x509.Certificate, password: str | None) -> tuple[Path, Path]:
    encryption = (serialization.BestAvailableEncryption(password.encode()) if password
                  else serialization.NoEncryption())
    key_path, cert_path = folder / f"{stem}.key.pem", folder / f"{stem}.cert.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class TestCA:
    """A self-signed CA that issues signing certificates (digital signature, non-repudiation)."""

    __test__ = False  # not a pytest class

    def __init__(self, folder: Path, name: str = "featureaudit test CA"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        stem = name.replace(" ", "-")
        self.cert_path = self.folder / f"{stem}.cert.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, *, password: str | None = None, days: int = 365,
              expired: bool = False) -> Identity:
        """A signer's certificate from this CA (``expired``: valid only until yesterday)."""
        now = datetime.now(timezone.utc)
        start, end = (now - timedelta(days=30), now - timedelta(days=1)) if expired else (
            now - timedelta(days=1), now + timedelta(days=days))
        return self._leaf(common_name, ec.generate_private_key(ec.SECP256R1()), start, end,
                          x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False, password)

    def issue_timestamping(self, common_name: str = "featureaudit test TSA") -> Identity:
        """A timestamp authority's RSA key and certificate from this CA: extended key usage timeStamping only, critical
        (RFC 3161 2.3)."""
        now = datetime.now(timezone.utc)
        return self._leaf(common_name, rsa.generate_private_key(public_exponent=65537, key_size=2048),
                          now - timedelta(days=1), now + timedelta(days=365),
                          x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), True, None)

    def _leaf(self, common_name: str, key, start: datetime, end: datetime, usage: x509.ExtendedKeyUsage,
              usage_critical: bool, password: str | None) -> Identity:
        """A certificate for ``key`` signed by this CA, valid from ``start`` to ``end``, for ``usage``."""
        cert = (
            x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(usage, critical=usage_critical)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_path, cert_path = _write(self.folder, common_name.replace(" ", "-"), key, cert, password)
        return Identity(common_name, key_path, cert_path, password)
