"""Email delivery: the report's PDF by SMTP, with the summary and warnings in the body; and, after an approval step,
a short plain mail of the reviewer's decision (:func:`decision_message`).

Settings come from the environment::

    FEATUREAUDIT_SMTP_HOST            required to send
    FEATUREAUDIT_SMTP_PORT            default 587 (starttls), 465 (ssl) or 25 (none)
    FEATUREAUDIT_SMTP_SECURITY        starttls (default), ssl or none
    FEATUREAUDIT_SMTP_USER            log in when set
    FEATUREAUDIT_SMTP_PASSWORD        the password, or
    FEATUREAUDIT_SMTP_PASSWORD_BLOCK  the name of a Prefect Secret block holding it
    FEATUREAUDIT_SMTP_FROM            sender address (default: the user, else featureaudit@localhost)
    FEATUREAUDIT_SMTP_CA_FILE         a PEM bundle of CA certificates trusted instead of the system store
    FEATUREAUDIT_SMTP_RETRY_DELAY     seconds before the first of 3 retries, doubling (default 10)

The password is read when a message is sent and is never logged, shown in a repr or written anywhere.

Only what can succeed on a later try is retried: connection errors (refused, timeout, DNS, a dropped
connection) and 4xx replies. A refused login, an untrusted certificate or a failed TLS handshake, a
refused sender or recipient, any other 5xx reply and a bad setting raise :class:`PermanentDeliveryError`,
which :func:`retry_unless_permanent` never retries: a wrong password tried again only locks the account.
"""

from __future__ import annotations

import os
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from tasks.core.errors import DeliveryError, ResultsError
from tasks.methods.table import title_of
from tasks.report.document import ResultsDocument, read_results

if TYPE_CHECKING:
    from tasks.report.approval import ApprovalEntry

Security = Literal["starttls", "ssl", "none"]
DEFAULT_PORTS: dict[str, int] = {"starttls": 587, "ssl": 465, "none": 25}
RETRIES = 3
TIMEOUT_S = 30.0
AUTH_MECHANISMS = ("PLAIN", "LOGIN", "CRAM-MD5")  # the first one the server offers is the only one tried


class PermanentDeliveryError(DeliveryError):
    """The report cannot be sent until someone changes a setting or the server: trying again cannot help."""


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry connection errors and 4xx replies, never a PermanentDeliveryError."""
    return not isinstance(state.data, PermanentDeliveryError)


@dataclass(frozen=True)
class SmtpSettings:
    """Where and how to send; ``password`` is kept out of ``repr``."""

    host: str
    port: int
    security: Security = "starttls"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = "featureaudit@localhost"
    timeout: float = TIMEOUT_S
    ca_file: str | None = None


def smtp_settings_from_env(env: Mapping[str, str] | None = None) -> SmtpSettings:
    """Read ``FEATUREAUDIT_SMTP_*``; a missing host, a bad port, security value or CA file is a PermanentDeliveryError."""
    env = os.environ if env is None else env
    host = env.get("FEATUREAUDIT_SMTP_HOST", "").strip()
    if not host:
        raise PermanentDeliveryError("FEATUREAUDIT_SMTP_HOST is not set: "
                                     "set it (and FEATUREAUDIT_SMTP_PORT) to email the report")
    security = env.get("FEATUREAUDIT_SMTP_SECURITY", "starttls").strip().lower() or "starttls"
    if security not in DEFAULT_PORTS:
        raise PermanentDeliveryError(f"FEATUREAUDIT_SMTP_SECURITY is {security!r}; expected starttls, ssl or none")
    raw_port = env.get("FEATUREAUDIT_SMTP_PORT", "").strip()
    try:
        port = int(raw_port) if raw_port else DEFAULT_PORTS[security]
    except ValueError:
        raise PermanentDeliveryError(f"FEATUREAUDIT_SMTP_PORT is {raw_port!r}; expected a port number such as 587") from None
    user = env.get("FEATUREAUDIT_SMTP_USER") or None
    password = env.get("FEATUREAUDIT_SMTP_PASSWORD") or None
    block = env.get("FEATUREAUDIT_SMTP_PASSWORD_BLOCK")
    if password is None and block:
        password = _secret_block(block)
    sender = env.get("FEATUREAUDIT_SMTP_FROM") or (user if user and "@" in user else "featureaudit@localhost")
    ca_file = env.get("FEATUREAUDIT_SMTP_CA_FILE", "").strip() or None
    if ca_file:
        check_ca_file(ca_file)
    return SmtpSettings(host=host, port=port, security=security, user=user, password=password, sender=sender,
                        ca_file=ca_file)


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verify the server's certificate and name against ``ca_file`` (a PEM bundle), else the system store."""
    return ssl.create_default_context(cafile=ca_file)


def check_ca_file(path: str) -> None:
    """``FEATUREAUDIT_SMTP_CA_FILE`` is a readable PEM bundle holding at least one certificate."""
    what = "a PEM bundle of the CA certificates that signed the SMTP server's certificate"
    if not Path(path).is_file():
        raise PermanentDeliveryError(f"FEATUREAUDIT_SMTP_CA_FILE is {path}, which is not a file: set it to {what}")
    try:
        tls_context(path)
    except ssl.SSLError as exc:
        raise PermanentDeliveryError(f"FEATUREAUDIT_SMTP_CA_FILE is {path}, which holds no PEM certificate "
                                     f"({exc.reason or 'unreadable PEM'}): set it to {what}") from None
    except OSError as exc:
        raise PermanentDeliveryError(f"FEATUREAUDIT_SMTP_CA_FILE is {path}, which cannot be read "
                                     f"({type(exc).__name__}): set it to {what}") from None


def retry_delay_from_env(env: Mapping[str, str] | None = None) -> float:
    """Seconds before the first retry (``FEATUREAUDIT_SMTP_RETRY_DELAY``, default 10); later ones double."""
    raw = (os.environ if env is None else env).get("FEATUREAUDIT_SMTP_RETRY_DELAY", "10")
    try:
        return max(float(raw), 0.0)
    except ValueError:
        raise PermanentDeliveryError(f"FEATUREAUDIT_SMTP_RETRY_DELAY is {raw!r}; expected seconds such as 10") from None


def check_recipients(recipients: list[str]) -> list[str]:
    """Plain ``user@host`` addresses, or a DeliveryError naming the bad one."""
    out = []
    for raw in recipients:
        parsed = getaddresses([raw])
        if len(parsed) != 1 or "@" not in parsed[0][1] or any(c in parsed[0][1] for c in " \r\n<>,;"):
            raise PermanentDeliveryError(f"--email-to: {raw!r} is not an email address such as reviewer@example.com")
        out.append(parsed[0][1])
    if not out:
        raise PermanentDeliveryError("--email-to: no recipients given")
    return out


def build_message(folder: str | Path, recipients: list[str], sender: str) -> EmailMessage:
    """The email for one run folder: subject with model, version and verdict; text and HTML; the PDF attached."""
    from tasks.report.render import environment

    folder = Path(folder)
    try:
        results = read_results(folder / "results.json")
    except ResultsError as exc:  # reading it again cannot help
        raise PermanentDeliveryError(f"cannot send the report in {folder}: {exc}") from None
    try:
        pdf = (folder / "report.pdf").read_bytes()
    except OSError as exc:
        raise DeliveryError(f"cannot read the report to send from {folder}: {exc}") from None
    context = email_context(results, folder)
    message = EmailMessage()
    message["Subject"] = context["subject"]
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message.set_content(text_body(context))
    message.add_alternative(environment().get_template("email.html.j2").render(**context), subtype="html")
    message.add_attachment(pdf, maintype="application", subtype="pdf", filename=context["attachment"])
    return message


def email_context(results: ResultsDocument, folder: Path) -> dict[str, Any]:
    """What the email says, decided here from ``results.json``; the templates only format it."""
    model, version, run_id = results.model.name, results.model.version, results.run.id
    return {
        "subject": f"featureaudit: {model} {version} — {results.verdict}",
        "model": model,
        "version": version,
        "verdict": results.verdict,
        "verdict_rule": results.verdict_rule,
        "verdict_reason": results.verdict_reason,
        "status": results.status,
        "methods": [{"name": name, "title": title_of(name), "status": m.status,
                     "error": m.error or m.reason}
                    for name, m in results.methods.items()],
        "warnings": [w.message for w in results.warnings],
        "sampling": results.test_rows.note if results.test_rows is not None else None,
        "run_id": run_id,
        "folder": str(folder),
        "attachment": f"featureaudit-{model}-{version}-{run_id}.pdf",
    }


def text_body(context: dict[str, Any]) -> str:
    """The plain-text alternative: the same content as ``email.html.j2``."""
    lines = [context["subject"].removeprefix("featureaudit: "), "",
             f"Verdict on the weight-based ranking: {context['verdict']}", context["verdict_reason"],
             f"Rule: {context['verdict_rule']}",
             f"Run {context['run_id']}: {context['status']}"]
    if context["sampling"]:
        lines.append(context["sampling"])
    lines += ["", "Methods:"]
    lines += [f"  - {m['title']}: {m['status']}" + (f" ({m['error']})" if m["error"] else "") for m in context["methods"]]
    lines += ["", "Warnings:" if context["warnings"] else "No warnings."]
    lines += [f"  - {w}" for w in context["warnings"]]
    lines += ["", f"The full report is attached ({context['attachment']}) and kept at {context['folder']}."]
    return "\n".join(lines) + "\n"


def send_message(settings: SmtpSettings, message: EmailMessage) -> None:
    """Send ``message`` over SMTP (STARTTLS, implicit TLS or plain), logging in when a user is set.

    Raises PermanentDeliveryError when trying again cannot help, DeliveryError when it may.
    """
    context = tls_context(settings.ca_file)
    try:
        if settings.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout, context=context)
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        with client:
            if settings.security == "starttls":
                client.starttls(context=context)
            if settings.user:
                _login(client, settings.user, settings.password or "")
            refused = client.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        reason, fix = _classify(exc)
        where = f"could not send the report via {settings.host}:{settings.port} ({settings.security})"
        if fix is None:
            raise DeliveryError(f"{where}: {reason}") from None
        raise PermanentDeliveryError(f"{where}: {reason}; {fix} (not retried)") from None
    if refused:  # some recipients have it: sending again would give them a second copy
        raise PermanentDeliveryError(f"sent the report via {settings.host}:{settings.port}, but the server refused "
                                     f"recipients {_refusals(refused)}; the other recipients have it; check the --email-to "
                                     "addresses (not retried: it would send them a second copy)")


def check_delivery(recipients: list[str]) -> list[str]:
    """Fail fast, before any method runs: the recipients are addresses and the SMTP settings are complete."""
    smtp_settings_from_env()
    return check_recipients(recipients)


@task(name="check-delivery")
def check_delivery_task(recipients: list[str]) -> list[str]:
    """Check the email settings and recipients before the audit starts."""
    return check_delivery(recipients)


@task(name="email-report", retries=RETRIES, retry_delay_seconds=exponential_backoff(backoff_factor=10),
      retry_condition_fn=retry_unless_permanent)
def email_report_task(folder: str, recipients: list[str]) -> int:
    """Email the run folder's PDF to ``recipients``; retried with backoff only when a later try can succeed."""
    settings = smtp_settings_from_env()
    message = build_message(folder, recipients, settings.sender)
    try:
        send_message(settings, message)
    except DeliveryError as exc:  # keeps its class: a PermanentDeliveryError is not retried
        raise type(exc)(f"{exc}; the report is kept at {folder}") from None
    get_run_logger().info("emailed %s to %d recipient(s) via %s:%d", message["Subject"], len(recipients),
                          settings.host, settings.port)
    return len(recipients)


def email_task_from_env():
    """``email_report_task`` with its backoff from ``FEATUREAUDIT_SMTP_RETRY_DELAY``."""
    return email_report_task.with_options(retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_from_env()))


def decision_message(entry: ApprovalEntry, folder: str | Path, recipients: list[str], sender: str) -> EmailMessage:
    """A short plain mail of a reviewer's decision: who, when, the comment, the report's sha256 and the log line's hash."""
    decided = "approved" if entry.decision == "approve" else "rejected"
    who = " ".join(entry.name.split())  # a name with a line break would make a second header line
    message = EmailMessage()
    message["Subject"] = f"featureaudit: {entry.model} {entry.version} {decided} by {who}"
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    lines = [f"{entry.model} {entry.version}, run {entry.run_id}: {decided} by {who} on {entry.time}."]
    if entry.comment:
        lines += ["", "Comment:", entry.comment]
    lines += ["", f"Report: {Path(folder) / 'report.pdf'}", f"Report sha256: {entry.report_sha256}",
              f"Approval log entry hash: {entry.hash}",
              "The decision is the line with this hash in approvals.jsonl beside the model's reports; "
              "'featureaudit approvals' verifies that log."]
    message.set_content("\n".join(lines) + "\n")
    return message


@task(name="email-decision", retries=RETRIES, retry_delay_seconds=exponential_backoff(backoff_factor=10),
      retry_condition_fn=retry_unless_permanent)
def email_decision_task(folder: str, entry: ApprovalEntry, recipients: list[str]) -> int:
    """Email the reviewer's decision to ``recipients``; retried with backoff only when a later try can succeed."""
    settings = smtp_settings_from_env()
    message = decision_message(entry, folder, recipients, settings.sender)
    try:
        send_message(settings, message)
    except DeliveryError as exc:  # keeps its class: a PermanentDeliveryError is not retried
        raise type(exc)(f"{exc} (the decision mail); the decision is recorded in approvals.jsonl") from None
    get_run_logger().info("emailed %s to %d recipient(s)", message["Subject"], len(recipients))
    return len(recipients)


def email_decision_task_from_env():
    """``email_decision_task`` with its backoff from ``FEATUREAUDIT_SMTP_RETRY_DELAY``."""
    return email_decision_task.with_options(
        retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_from_env()))


def _secret_block(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        return Secret.load(name).get()
    except Exception as exc:  # no server, no such block, wrong type
        raise DeliveryError(f"FEATUREAUDIT_SMTP_PASSWORD_BLOCK: cannot load Prefect Secret block {name!r} "
                            f"({type(exc).__name__})") from None


def _login(client: smtplib.SMTP, user: str, password: str) -> None:
    """Log in with one mechanism the server offers: one AUTH per try (``SMTP.login`` tries each, so a wrong
    password would count twice or more against the account's lockout)."""
    client.ehlo_or_helo_if_needed()
    offered = client.esmtp_features.get("auth", "").upper().split()
    mechanism = next((m for m in AUTH_MECHANISMS if m in offered), None)
    if mechanism is None:
        raise smtplib.SMTPNotSupportedError(f"the server offers no login ({' '.join(offered) or 'no AUTH'}) "
                                            f"on this connection, but FEATUREAUDIT_SMTP_USER is set")
    client.user, client.password = user, password
    client.auth(mechanism, getattr(client, "auth_" + mechanism.lower().replace("-", "_")))


def _classify(exc: BaseException) -> tuple[str, str | None]:
    """What went wrong, and what to do when trying again cannot help (None: transient, retried with backoff).

    Nothing the server said in reply to the login is included: it could echo the password.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _untrusted_certificate(exc)
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return (f"TLS handshake failed ({exc.reason or exc})",
                "check that FEATUREAUDIT_SMTP_SECURITY suits FEATUREAUDIT_SMTP_PORT (ssl is usually 465, starttls 587)")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return str(exc).rstrip("."), "check FEATUREAUDIT_SMTP_SECURITY, FEATUREAUDIT_SMTP_PORT and FEATUREAUDIT_SMTP_USER"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        permanent = all(code >= 500 for code, _ in exc.recipients.values())
        return f"recipients refused: {_refusals(exc.recipients)}", "check the --email-to addresses" if permanent else None
    if not isinstance(exc, smtplib.SMTPResponseException):  # refused, timeout, DNS, disconnected: may pass
        return f"{type(exc).__name__}: {_reply(str(exc))}", None
    code = exc.smtp_code
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        reason = f"login refused (SMTP {code})"
        fix = "check FEATUREAUDIT_SMTP_USER and the password"
    elif code == 530:
        reason, fix = f"the server requires a login (SMTP {code})", "set FEATUREAUDIT_SMTP_USER and the password"
    elif isinstance(exc, smtplib.SMTPSenderRefused):
        reason = f"sender {exc.sender} refused (SMTP {code} {_reply(exc.smtp_error)})"
        fix = "set FEATUREAUDIT_SMTP_FROM to an address this account may send from"
    else:
        reason, fix = f"the server replied SMTP {code} {_reply(exc.smtp_error)}", "see the server's reply"
    return reason, fix if code >= 500 else None  # 4xx: a transient refusal, tried again later


def _untrusted_certificate(exc: ssl.SSLCertVerificationError) -> tuple[str, str]:
    """The certificate problem in words, and its fix."""
    detail = exc.verify_message or exc.reason or str(exc)
    if exc.verify_code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH
        return (f"the server's certificate is not for this host ({detail})",
                "set FEATUREAUDIT_SMTP_HOST to a name the certificate lists")
    if exc.verify_code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return f"the server's certificate has expired ({detail})", "renew it on the server, or check this machine's clock"
    return (f"the server's certificate is not trusted ({detail})",
            "set FEATUREAUDIT_SMTP_CA_FILE to a PEM file of the CA that signed it")


def _refusals(refused: Mapping[str, tuple[int, bytes]]) -> str:
    """Each refused recipient with the server's reply."""
    return ", ".join(f"{address} (SMTP {code} {_reply(reply)})" for address, (code, reply) in refused.items())


def _reply(reply: bytes | str) -> str:
    """The server's reply text on one line, cut short."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())[:200]
