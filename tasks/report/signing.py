"""Signed reports: each PDF certified as the pipeline's at creation, reviewers' signatures added later, all verified.

When a signing key is configured the report is certified with a PAdES signature (pyHanko) in its
"Prepared by" field, with DocMDP permission "fill forms": later revisions may only fill form fields
and sign. The empty "Reviewed by" and "Approved by" signature fields lie over the sign-off block's
signature cells, found from WeasyPrint's layout (an ``id`` on each cell). Each later signature is an
incremental revision (``featureaudit sign``); ``featureaudit verify`` lists every signature, whether
anything beyond form filling and signing changed after it, and whether the embedded results.json is
what the document's text states.

Settings (checked before any computation, each error naming the setting):

    FEATUREAUDIT_SIGNING_KEY           PEM file of the private key
    FEATUREAUDIT_SIGNING_CERT          PEM file of its certificate (intermediate certificates may follow it)
    FEATUREAUDIT_SIGNING_KEY_PASSWORD  the key's password, when it is encrypted
    FEATUREAUDIT_SIGNING_SECRET        instead of the three: the name of a Prefect Secret block holding
                                       {"key": PEM, "cert": PEM, "password": optional} or both PEMs in one text

The key material is read where it is used and never passed to a Prefect task, logged or shown.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from prefect import task

from tasks.core.errors import SigningError
from tasks.methods.table import title_of

ROLES: dict[str, str] = {"prepared": "Prepared by", "reviewed": "Reviewed by", "approved": "Approved by"}
#: The role each later signer takes; "prepared" is the certification signature's own field.
SIGNING_ROLES = ("reviewed", "approved")
DECISIONS = ("approve", "reject")
FIELD_PREFIX = "featureaudit_"
#: A certificate whose subject's organization is this is the demo's generated key: labelled, never evidence.
DEMO_ORGANIZATION = "featureaudit demonstration"
DEMO_LABEL = "Signed with a demonstration key: not evidence of authorship"
KEY_ENV, CERT_ENV, PASSWORD_ENV, SECRET_ENV = (
    "FEATUREAUDIT_SIGNING_KEY", "FEATUREAUDIT_SIGNING_CERT", "FEATUREAUDIT_SIGNING_KEY_PASSWORD",
    "FEATUREAUDIT_SIGNING_SECRET")
#: Seconds a timestamp request may take in all (connecting, sending, the answer) before signing gives up.
TIMESTAMP_TIMEOUT_S = 20
_CSS_PX_TO_PT = 0.75
_QUIET = ("pyhanko", "pyhanko_certvalidator", "fontTools")


@dataclass(frozen=True)
class SigningKey:
    """Key material and where it came from (each ``*_label`` is the setting or flag an error names)."""

    key_pem: bytes = field(repr=False)
    cert_pem: bytes = field(repr=False)
    password: bytes | None = field(default=None, repr=False)
    key_label: str = KEY_ENV
    cert_label: str = CERT_ENV
    password_label: str = PASSWORD_ENV


@dataclass(frozen=True)
class Signer:
    """Who signs with a key: public facts only, safe to pass between tasks and show in a report."""

    common_name: str
    organization: str | None

    @property
    def demo(self) -> bool:
        return self.organization == DEMO_ORGANIZATION


# --- keys -------------------------------------------------------------------------------------------------------


def key_from_files(key: str | Path, cert: str | Path, password: str | None = None, *, key_label: str,
                   cert_label: str, password_label: str) -> SigningKey:
    """Read a key and certificate from PEM files; an unreadable file is one line naming its setting."""
    return SigningKey(key_pem=_read(key, key_label), cert_pem=_read(cert, cert_label),
                      password=password.encode() if password else None,
                      key_label=f"{key_label} {key}", cert_label=f"{cert_label} {cert}", password_label=password_label)


def signing_key_from_env(env: Mapping[str, str] | None = None) -> SigningKey | None:
    """The pipeline's signing key as configured, or None when none is (the report is then unsigned)."""
    env = os.environ if env is None else env
    key, cert, secret = _settings(env)
    if secret:
        return _key_from_secret(secret)
    if not key and not cert:
        return None
    if not (key and cert):
        given, missing = (KEY_ENV, CERT_ENV) if key else (CERT_ENV, KEY_ENV)
        raise SigningError(f"{given} is set but {missing} is not; set both (PEM files of the key and its "
                           "certificate) or neither")
    return key_from_files(key, cert, env.get(PASSWORD_ENV) or None, key_label=KEY_ENV, cert_label=CERT_ENV,
                          password_label=PASSWORD_ENV)


def _settings(env: Mapping[str, str]) -> tuple[str, str, str]:
    """The key, certificate and Secret block settings as given; refused when a Secret block and files are both set."""
    key, cert, secret = (env.get(name, "").strip() for name in (KEY_ENV, CERT_ENV, SECRET_ENV))
    if secret and (key or cert):
        raise SigningError(f"{SECRET_ENV} and {KEY_ENV}/{CERT_ENV} are both set; set one or the other")
    return key, cert, secret


def check_key(key: SigningKey, *, now: datetime | None = None) -> Signer:
    """Load ``key`` and check it can sign now: a readable key, the right password, a certificate of that key, in date."""
    private, certs = _load(key)
    cert = certs[0]
    now = now or datetime.now(timezone.utc)
    if cert.not_valid_after_utc < now:
        raise SigningError(f"{key.cert_label} expired on {cert.not_valid_after_utc:%Y-%m-%d}; renew the certificate")
    if cert.not_valid_before_utc > now:
        raise SigningError(f"{key.cert_label} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; "
                           "check the machine's clock or the certificate")
    return _signer(cert)


def check_signing(env: Mapping[str, str] | None = None, *, secrets: bool = True) -> Signer | None:
    """The configured signing key checked, before any computation; None when no key is configured.

    ``secrets=False`` leaves a Prefect Secret block unread (it needs the Prefect API; the flow's first task checks it).
    """
    env = os.environ if env is None else env
    if not secrets and _settings(env)[2]:
        return None
    key = signing_key_from_env(env)
    return check_key(key) if key is not None else None


@task(name="check-signing")
def check_signing_task() -> Signer | None:
    """Fail the run before any computation if the configured signing key cannot sign."""
    return check_signing()


def demo_key(folder: str | Path) -> tuple[Path, Path]:
    """A self-signed demonstration key and certificate in ``folder`` (made once, remade when near expiry)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = Path(folder)
    key_path, cert_path = folder / "demo-signing.key.pem", folder / "demo-signing.cert.pem"
    now = datetime.now(timezone.utc)
    if key_path.exists() and cert_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.not_valid_after_utc > now + timedelta(days=1):
            return key_path, cert_path
    folder.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEMO_ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, "featureaudit demo pipeline")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=365))
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(private, hashes.SHA256()))
    key_path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


# --- what the sign-off block says ---------------------------------------------------------------------------------


def signoff_context(signer: Signer | None, covered: list[str]) -> dict[str, Any]:
    """The sign-off block: one row per role (its cell ``id`` places the signature field), the signing status, and
    the lines the signatures cover (checked against the embedded results.json by :func:`verify_pdf`)."""
    if signer is None:
        status = "This document is unsigned: no signing key was configured when it was produced."
    elif signer.demo:
        status = DEMO_LABEL + "."
    else:
        status = (f"Certified at creation by {signer.common_name}: any change other than the signatures below "
                  "invalidates it. Check it with featureaudit verify.")
    return {"roles": [{"key": key, "title": title, "name": signer.common_name if signer and key == "prepared" else ""}
                      for key, title in ROLES.items()],
            "status": status, "demo": bool(signer and signer.demo), "signed": signer is not None, "covered": covered}


def covered_lines(run_id: str, verdict: str, methods: Iterable[Any], *, top: int = 3) -> list[str]:
    """What the document states in short, from the run's method entries (:class:`tasks.report.document.MethodEntry`):
    the run, the verdict, each method's status and top features."""
    lines = [f"Run {run_id}: verdict {verdict}."]
    for entry in methods:
        if entry.status == "ok":
            ranked = sorted(entry.features, key=lambda record: record.rank)[:top]
            lines.append(f"{title_of(entry.method)}: ok, top {', '.join(record.feature for record in ranked)}.")
        else:
            lines.append(f"{title_of(entry.method)}: {entry.status}.")
    return lines


# --- certify and sign ---------------------------------------------------------------------------------------------


def signature_boxes(document: Any) -> dict[str, tuple[int, tuple[int, int, int, int]]]:
    """Each role's signature cell in a rendered WeasyPrint document: its page and box in PDF points (origin bottom
    left), from the anchors of the cells' ids (``signature-<role>``)."""
    boxes = {}
    for index, page in enumerate(document.pages):
        for role in ROLES:
            anchor = page.anchors.get(f"signature-{role}")
            if anchor is not None and role not in boxes:
                x1, y1, x2, y2 = anchor
                boxes[role] = (index, (round(x1 * _CSS_PX_TO_PT), round((page.height - y2) * _CSS_PX_TO_PT),
                                       round(x2 * _CSS_PX_TO_PT), round((page.height - y1) * _CSS_PX_TO_PT)))
    missing = [ROLES[role] for role in ROLES if role not in boxes]
    if missing:
        raise SigningError(f"the report template has no signature cell for {', '.join(missing)} "
                           "(an element with id 'signature-<role>' in its sign-off block)")
    return boxes


def certify_pdf(pdf: bytes, key: SigningKey, boxes: Mapping[str, tuple[int, tuple[int, int, int, int]]]) -> bytes:
    """Certify ``pdf`` as its author (DocMDP: form filling and signing only), with an empty signature field for each
    later role; the "Prepared by" field holds the certification signature itself."""
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers

    with quiet_logs():
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
        _keep_pdfa_metadata(writer)
        for role in SIGNING_ROLES:
            page, box = boxes[role]
            fields.append_signature_field(writer, fields.SigFieldSpec(field_name(role), on_page=page, box=box))
        page, box = boxes["prepared"]
        meta = signers.PdfSignatureMetadata(
            field_name=field_name("prepared"), certify=True, docmdp_permissions=fields.MDPPerm.FILL_FORMS,
            subfilter=fields.SigSeedSubFilter.PADES, md_algorithm="sha256",
            reason="certified as produced by featureaudit")
        signer = _pyhanko_signer(key)
        out = io.BytesIO()
        signers.PdfSigner(meta, signer, stamp_style=_stamp_style(),
                          new_field_spec=fields.SigFieldSpec(field_name("prepared"), on_page=page, box=box)
                          ).sign_pdf(writer, output=out, appearance_text_params={"role": ROLES["prepared"], "decision": ""})
    return out.getvalue()


def sign_pdf(pdf: bytes, role: str, key: SigningKey, *, source: str, name: str | None = None,
             decision: str | None = None, comment: str | None = None, timestamp_url: str | None = None) -> bytes:
    """Sign ``role``'s field of a certified report in a new revision; name, decision and comment go into the
    signature. A report not certified by featureaudit, without that field, or with it signed already is refused."""
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers

    if role not in SIGNING_ROLES:
        raise SigningError(f"--role {role}: choose one of {', '.join(SIGNING_ROLES)}")
    if decision is not None and decision not in DECISIONS:
        raise SigningError(f"--decision {decision}: choose one of {', '.join(DECISIONS)}")
    signer_info = check_key(key)
    reader = _reader(pdf, source)
    present = {name_: value for name_, value, _ in fields.enumerate_sig_fields(reader)}
    if field_name("prepared") not in present or present[field_name("prepared")] is None or \
            "/DocMDP" not in reader.root.get("/Perms", {}):
        raise SigningError(f"{source} is not certified by featureaudit (no certification signature in its "
                           f"'{ROLES['prepared']}' field); only a report certified when it was produced can be signed")
    if field_name(role) not in present:
        raise SigningError(f"{source} has no '{ROLES[role]}' signature field ({field_name(role)}); "
                           "it was not produced by featureaudit's signing pipeline")
    if present[field_name(role)] is not None:
        raise SigningError(f"{source}: '{ROLES[role]}' is signed already; a role is signed once")
    reason = "; ".join(part for part in (f"decision: {decision}" if decision else None,
                                          f"comment: {comment}" if comment else None) if part) or None
    meta = signers.PdfSignatureMetadata(field_name=field_name(role), subfilter=fields.SigSeedSubFilter.PADES,
                                        md_algorithm="sha256", name=name or signer_info.common_name, reason=reason)
    timestamper = None
    if timestamp_url:
        timestamper = _timestamper(timestamp_url)
    with quiet_logs():
        writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
        _keep_pdfa_metadata(writer)
        out = io.BytesIO()
        try:
            signers.PdfSigner(meta, _pyhanko_signer(key), stamp_style=_stamp_style(), timestamper=timestamper
                              ).sign_pdf(writer, output=out,
                                         appearance_text_params={"role": ROLES[role], "decision": decision or ""})
        except Exception as exc:
            if timestamper is None or not _from_timestamping(exc):
                raise
            raise SigningError(f"--timestamp-url {timestamp_url}: no timestamp obtained ({_timestamp_failure(exc)}); "
                               "check the URL or sign without it") from None
    return out.getvalue()


# --- verify -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureCheck:
    """One signature as verified: who, when, whether it is intact and trusted, and what changed after it."""

    field: str
    signer: str
    signed_at: datetime | None
    timestamped: bool
    valid: bool
    trusted: bool | None  # None: no trust anchors were given
    certification: bool
    changes: str  # "none", "form filling and signing", or what else changed
    allowed: bool
    demo: bool
    decision: str | None = None
    comment: str | None = None
    timestamp_trusted: bool | None = None  # None: not timestamped, or no trust anchors were given

    @property
    def role(self) -> str:
        key = self.field.removeprefix(FIELD_PREFIX)
        return ROLES.get(key, f"field {self.field}") if self.field.startswith(FIELD_PREFIX) else f"field {self.field}"

    def line(self) -> str:
        when = f"{self.signed_at:%Y-%m-%d %H:%M:%S} UTC" if self.signed_at else "no signing time"
        trust = {None: "trust not checked", True: "trusted", False: "not trusted"}[self.trusted]
        parts = [f"{self.role}: {self.signer}" + (" (demonstration key: not evidence of authorship)" if self.demo
                                                  else ""),
                 f"signed {when}" + ((" (timestamped)" if self.timestamp_trusted is not False
                                      else " (timestamped by an authority not trusted)")
                                     if self.timestamped else " (signer's clock)"),
                 ("certification, " if self.certification else "") + ("valid" if self.valid else "NOT valid"),
                 trust, f"changed after it: {self.changes}"]
        if self.decision:
            parts.append(f"decision: {self.decision}")
        if self.comment:
            parts.append(f"comment: {self.comment}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Verification:
    """Every signature of a report, the roles not signed yet, and one line per problem found."""

    signatures: tuple[SignatureCheck, ...]
    unsigned: tuple[str, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_pdf(pdf: bytes, *, source: str, trust: Mapping[str, bytes] | None = None, results: bytes | None = None,
               results_source: str = "results.json") -> Verification:
    """Verify a report's signatures (intact, trusted when ``trust`` maps file names to PEM CA certificates, nothing
    changed after each beyond form filling and signing) and its embedded results.json (against the text, and byte for
    byte against ``results`` when given)."""
    from pyhanko.sign import fields
    from pyhanko.sign.diff_analysis import ModificationLevel
    from pyhanko.sign.validation import validate_pdf_signature
    from pyhanko.sign.validation.settings import KeyUsageConstraints
    from pyhanko_certvalidator import ValidationContext

    reader = _reader(pdf, source)
    anchors = [anchor for name, data in (trust or {}).items() for anchor in _certificates(data, f"--trust {name}")]
    context = ValidationContext(trust_roots=[_asn1(cert) for cert in anchors], allow_fetching=False)
    usage = KeyUsageConstraints(key_usage={"digital_signature", "non_repudiation"}, match_all_key_usages=False)
    checks, problems = [], []
    with quiet_logs():
        embedded = list(reader.embedded_signatures)
        for sig in embedded:
            try:
                status = validate_pdf_signature(sig, context, key_usage_settings=usage)
            except Exception as exc:  # a malformed signature: named, not a crash
                problems.append(f"{source}: the signature in field {sig.field_name} cannot be validated "
                                f"({type(exc).__name__}: {exc})")
                continue
            checks.append(_check(sig, status, trust_given=trust is not None,
                                 allowed_levels=(ModificationLevel.NONE, ModificationLevel.LTA_UPDATES,
                                                 ModificationLevel.FORM_FILLING)))
        unsigned = tuple(ROLES.get(name.removeprefix(FIELD_PREFIX), name)
                         for name, value, _ in fields.enumerate_sig_fields(reader) if value is None)
    problems.extend(_signature_problems(source, checks, embedded))
    problems.extend(_results_problems(pdf, source, results, results_source))
    return Verification(tuple(checks), unsigned, tuple(problems))


def field_name(role: str) -> str:
    return FIELD_PREFIX + role


def printable(text: str) -> str:
    """``text`` safe for a terminal: what a PDF or a results.json supplies (names, comments, field names) may hold
    control characters, such as escape sequences; each becomes '?'."""
    return "".join("?" if unicodedata.category(char).startswith("C") else char for char in text)


@contextmanager
def quiet_logs() -> Iterator[None]:
    """pyHanko logs a traceback for every certificate it cannot chain, and fontTools a notice per subset font: the
    outcome is reported instead, so their loggers are silenced meanwhile."""
    loggers = [logging.getLogger(name) for name in _QUIET]
    saved = [lg.level for lg in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for logger, level in zip(loggers, saved):
            logger.setLevel(level)


# --- helpers ------------------------------------------------------------------------------------------------------


def _read(path: str | Path, label: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SigningError(f"{label}: cannot read {path} ({exc.strerror or exc}); give a readable PEM file") from None


def _key_from_secret(name: str) -> SigningKey:
    from prefect.blocks.system import Secret

    label = f"{SECRET_ENV} (Prefect Secret block {name!r})"
    try:
        value = Secret.load(name).get()
    except Exception as exc:
        raise SigningError(f"{SECRET_ENV}: cannot load Prefect Secret block {name!r} ({type(exc).__name__}: {exc}); "
                           "create it with the key and certificate PEMs") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = {"key": value, "cert": value}
    if not isinstance(value, dict) or not isinstance(value.get("key"), str) or not isinstance(value.get("cert"), str):
        raise SigningError(f"{label} holds neither {{'key': PEM, 'cert': PEM}} nor a text with both PEMs")
    password = value.get("password")
    return SigningKey(key_pem=value["key"].encode(), cert_pem=value["cert"].encode(),
                      password=password.encode() if isinstance(password, str) and password else None,
                      key_label=label + " key", cert_label=label + " cert", password_label=label + " password")


def _load(key: SigningKey):
    from cryptography.hazmat.primitives import serialization

    block = re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", key.key_pem, re.S)
    if block is None:
        raise SigningError(f"{key.key_label} holds no PEM private key; give the signing key in PEM form")
    try:
        private = serialization.load_pem_private_key(block.group(0), password=key.password)
    except TypeError:
        if key.password is None:
            raise SigningError(f"{key.key_label} is encrypted; set {key.password_label} to its password") from None
        raise SigningError(f"{key.key_label} is not encrypted, but {key.password_label} is set; unset it") from None
    except ValueError as exc:
        if key.password is not None:
            raise SigningError(f"{key.password_label} does not decrypt {key.key_label}; check the password") from None
        raise SigningError(f"{key.key_label} is not a usable private key ({exc})") from None
    certs = _certificates(key.cert_pem, key.cert_label)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if certs[0].public_key().public_bytes(serialization.Encoding.DER, public) != \
            private.public_key().public_bytes(serialization.Encoding.DER, public):
        raise SigningError(f"{key.cert_label} is not the certificate of {key.key_label} (their public keys differ); "
                           "give the certificate issued for this key")
    return private, certs


def _certificates(data: bytes, label: str) -> list:
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise SigningError(f"{label} holds no PEM certificate")
    return certs


def _signer(cert) -> Signer:
    from cryptography.x509.oid import NameOID

    def attribute(oid) -> str | None:
        values = cert.subject.get_attributes_for_oid(oid)
        return str(values[0].value) if values else None

    return Signer(common_name=attribute(NameOID.COMMON_NAME) or cert.subject.rfc4514_string(),
                  organization=attribute(NameOID.ORGANIZATION_NAME))


def _asn1(cert):
    from asn1crypto import x509 as asn1_x509
    from cryptography.hazmat.primitives import serialization

    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


def _pyhanko_signer(key: SigningKey):
    from asn1crypto import keys as asn1_keys
    from cryptography.hazmat.primitives import serialization
    from pyhanko.sign.signers import SimpleSigner
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    private, certs = _load(key)
    der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    chain = [_asn1(cert) for cert in certs]
    return SimpleSigner(signing_cert=chain[0], signing_key=asn1_keys.PrivateKeyInfo.load(der),
                        cert_registry=SimpleCertificateStore.from_certs(chain))


def _timestamper(url: str):
    """An RFC 3161 client for ``url`` that gives up after ``TIMESTAMP_TIMEOUT_S`` and says why an answer is unusable:
    a refusal by its status (asn1crypto cannot parse a response without a token, which is what a refusal is), or a
    body that is no timestamp response at all."""
    from asn1crypto import core, tsp
    from pyhanko.sign.timestamps import HTTPTimeStamper, TimestampRequestError

    class Refusal(core.Sequence):
        _fields = [("status", tsp.PKIStatusInfo)]

    class Timestamper(HTTPTimeStamper):
        async def async_request_tsa_response(self, req):
            unusable = TimestampRequestError("the answer is not an RFC 3161 timestamp response")
            try:
                response = await super().async_request_tsa_response(req)
            except ValueError:  # not even DER
                raise unusable from None
            try:
                response["status"].native  # asn1crypto parses on access
                return response
            except ValueError:
                pass
            try:
                status = Refusal.load(response.dump())["status"].native
            except ValueError:
                raise unusable from None
            if status["status"] == "granted":  # granted, yet no token that parses
                raise unusable
            reasons = "; ".join([*(status["status_string"] or []), *sorted(status["fail_info"] or [])])
            raise TimestampRequestError(f"the authority answered '{status['status']}'" +
                                        (f": {reasons}" if reasons else ""))

    return Timestamper(url, timeout=TIMESTAMP_TIMEOUT_S)


def _from_timestamping(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is pyHanko's failure to get a timestamp, rather than another
    signing error that must not be blamed on --timestamp-url."""
    from pyhanko.sign.timestamps import TimestampRequestError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TimestampRequestError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _timestamp_failure(exc: BaseException) -> str:
    """Why no timestamp came, in words: pyHanko wraps the connection's own error (refused, timed out, HTTP status)."""
    from pyhanko.sign.timestamps import TimestampRequestError

    cause = exc.__cause__
    if isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
        return f"no answer within {TIMESTAMP_TIMEOUT_S:g} s"
    if not isinstance(exc, TimestampRequestError):
        return f"{type(exc).__name__}: {exc}"
    return f"{exc}: {cause}" if cause is not None else str(exc)


STAMP_PT = 9  # the signature stamp's font size


def _stamp_style():
    """The signature's visible appearance: role, signer, time and decision, in an embedded font (PDF/A)."""
    import matplotlib
    from pyhanko.pdf_utils.font.opentype import GlyphAccumulatorFactory
    from pyhanko.pdf_utils.text import TextBoxStyle
    from pyhanko.stamp import TextStampStyle

    # pyHanko writes the font's glyph widths in the font's own units as if they were the PDF's thousandths of an em:
    # DejaVu's 2,048 units to the em drew the stamp letter-spaced at twice its width and cut off at the cell's edge.
    # STIX, which matplotlib ships too, has 1,000 units to the em. The font engine is given the box's size as well
    # (it shapes at 10 pt by default).
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "STIXGeneral.ttf"
    return TextStampStyle(stamp_text="%(role)s %(signer)s\n%(ts)s %(decision)s", border_width=0, background=None,
                          timestamp_format="%Y-%m-%d %H:%M UTC",
                          text_box_style=TextBoxStyle(font=GlyphAccumulatorFactory(str(font), font_size=STAMP_PT),
                                                      font_size=STAMP_PT))


def _keep_pdfa_metadata(writer) -> None:
    """PDF/A wants the info dictionary and the XMP metadata to agree. pyHanko writes its own name as the XMP's
    producer but appends it to the info dictionary's: the info dictionary gets the XMP's value up front, and the
    renderer moves to the creator tool (in both), where it belongs, unless a creator is named already."""
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.metadata.model import VENDOR

    if "/Info" not in writer.trailer:
        return
    reference = writer.trailer.raw_get("/Info")
    info = reference.get_object()
    producer = str(info["/Producer"]) if "/Producer" in info else ""
    if producer == VENDOR:
        return
    if producer and "/Creator" not in info:
        creator = f"featureaudit with {producer}"
        info["/Creator"] = generic.TextStringObject(creator)
        writer.document_meta.creator = creator
    info["/Producer"] = generic.TextStringObject(VENDOR)
    if isinstance(reference, generic.IndirectObject):
        writer.mark_update(reference)


def _reader(pdf: bytes, source: str):
    from pyhanko.pdf_utils.reader import PdfFileReader

    try:
        return PdfFileReader(io.BytesIO(pdf), strict=False)
    except Exception as exc:
        raise SigningError(f"{source} is not a readable PDF ({type(exc).__name__}: {exc})") from None


def _check(sig, status, *, trust_given: bool, allowed_levels) -> SignatureCheck:
    signer = _signer(_cryptography_cert(status.signing_cert))
    reason = str(sig.sig_object.get("/Reason", "")) if "/Reason" in sig.sig_object else ""
    decision = re.search(r"decision: (\w+)", reason)
    comment = re.search(r"comment: (.*)$", reason, re.S)
    level = status.modification_level
    allowed = bool(status.docmdp_ok is not False and level in allowed_levels)
    if level is None or level.name == "NONE":
        changes = "none"
    elif allowed:
        changes = "form filling and signing only"
    else:
        changes = {"ANNOTATIONS": "annotations added or changed"}.get(level.name, "content, pages or annotations "
                                                                               "changed")
    timestamp = status.timestamp_validity
    signed_at = timestamp.timestamp if timestamp is not None else status.signer_reported_dt
    name = str(sig.sig_object["/Name"]) if "/Name" in sig.sig_object else None
    shown = signer.common_name if not name or name == signer.common_name else f"{name} ({signer.common_name})"
    return SignatureCheck(field=sig.field_name, signer=shown,
                          signed_at=signed_at.astimezone(timezone.utc) if signed_at else None,
                          timestamped=timestamp is not None,
                          valid=bool(status.intact and status.valid and status.coverage is not None
                                     and status.coverage.name in ("ENTIRE_REVISION", "ENTIRE_FILE")
                                     and (timestamp is None or (timestamp.intact and timestamp.valid))),
                          trusted=bool(status.trusted) if trust_given else None,
                          timestamp_trusted=bool(timestamp.trusted) if trust_given and timestamp else None,
                          certification=sig.docmdp_level is not None, changes=changes,
                          allowed=allowed, demo=signer.demo, decision=decision.group(1) if decision else None,
                          comment=comment.group(1).strip() if comment else None)


def _cryptography_cert(cert):
    from cryptography import x509

    return x509.load_der_x509_certificate(cert.dump())


def _signature_problems(source: str, checks: list[SignatureCheck], embedded: list) -> list[str]:
    if not embedded:
        return [f"{source} is not signed: it has no signatures"]
    problems = []
    first = checks[0] if checks else None
    if first is None or first.field != field_name("prepared") or not first.certification:
        problems.append(f"{source} is not certified by featureaudit: its first signature is not the certification "
                        f"in the '{ROLES['prepared']}' field")
    for check in checks:
        if not check.valid:
            problems.append(f"{source}: the {check.role} signature by {check.signer} is not valid: the bytes it signed "
                            "were altered, or the signature or its certificate is broken")
        if check.trusted is False:
            problems.append(f"{source}: the {check.role} signer {check.signer} does not chain to a CA given with "
                            "--trust")
        if check.timestamp_trusted is False:
            problems.append(f"{source}: the timestamp authority of the {check.role} signature does not chain to a CA "
                            "given with --trust, so its signing time is not established; add that authority's CA")
    changed = [check for check in checks if not check.allowed]
    if changed:  # every signature before a change reports it: name the last one it follows
        last = changed[-1]
        problems.append(f"{source} was changed after the {last.role} signature beyond form filling and signing "
                        f"({last.changes})")
    return problems


def _results_problems(pdf: bytes, source: str, beside: bytes | None, beside_source: str) -> list[str]:
    import pypdf

    from tasks.core.errors import ResultsError
    from tasks.report.document import ResultsDocument

    try:
        reader = pypdf.PdfReader(io.BytesIO(pdf))
        attached = reader.attachments.get("results.json") or []
        text = " ".join(" ".join((page.extract_text() or "").split()) for page in reader.pages)
    except Exception as exc:
        return [f"{source}: its text or attachments cannot be read ({type(exc).__name__}: {exc})"]
    if not attached:
        return [f"{source} has no embedded results.json"]
    embedded = attached[0]
    problems = []
    if beside is not None and beside != embedded:
        problems.append(f"{beside_source} differs from the results.json embedded in {source}")
    try:
        document = ResultsDocument.from_json(json.loads(embedded), source=f"the results.json embedded in {source}")
    except (ValueError, ResultsError) as exc:
        return [*problems, str(exc) if isinstance(exc, ResultsError)
                else f"the results.json embedded in {source} is not JSON; the report is damaged"]
    text = " ".join(text.split())
    expected = [f"Verdict on the weight-based ranking: {document.verdict}",
                *covered_lines(document.run.id, document.verdict, document.methods.values())]
    for line in expected:
        if " ".join(line.split()) not in text:
            problems.append(f"the results.json embedded in {source} does not match its text: "
                            f"'{line}' is not in the document")
    return problems
