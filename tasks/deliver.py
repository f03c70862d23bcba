"""Email delivery: the report's PDF by SMTP, with the summary and warnings in the body.

Settings come from the environment::

    FEATUREAUDIT_SMTP_HOST            required to send
    FEATUREAUDIT_SMTP_PORT            default 587 (starttls), 465 (ssl) or 25 (none)
    FEATUREAUDIT_SMTP_SECURITY        starttls (default), ssl or none
    FEATUREAUDIT_SMTP_USER            log in when set
    FEATUREAUDIT_SMTP_PASSWORD        the password, or
    FEATUREAUDIT_SMTP_PASSWORD_BLOCK  the name of a Prefect Secret block holding it
    FEATUREAUDIT_SMTP_FROM            sender address (default: the user, else featureaudit@localhost)
    FEATUREAUDIT_SMTP_RETRY_DELAY     seconds before the first of 3 retries, doubling (default 10)

The password is read when a message is sent and is never logged, shown in a repr or written anywhere.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.tasks import exponential_backoff

from tasks.errors import DeliveryError

Security = Literal["starttls", "ssl", "none"]
DEFAULT_PORTS: dict[str, int] = {"starttls": 587, "ssl": 465, "none": 25}
RETRIES = 3
TIMEOUT_S = 30.0


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


def smtp_settings_from_env(env: Mapping[str, str] | None = None) -> SmtpSettings:
    """Read ``FEATUREAUDIT_SMTP_*``; a missing host or a bad port or security value is a DeliveryError."""
    env = os.environ if env is None else env
    host = env.get("FEATUREAUDIT_SMTP_HOST", "").strip()
    if not host:
        raise DeliveryError("FEATUREAUDIT_SMTP_HOST is not set: set it (and FEATUREAUDIT_SMTP_PORT) to email the report")
    security = env.get("FEATUREAUDIT_SMTP_SECURITY", "starttls").strip().lower() or "starttls"
    if security not in DEFAULT_PORTS:
        raise DeliveryError(f"FEATUREAUDIT_SMTP_SECURITY is {security!r}; expected starttls, ssl or none")
    raw_port = env.get("FEATUREAUDIT_SMTP_PORT", "").strip()
    try:
        port = int(raw_port) if raw_port else DEFAULT_PORTS[security]
    except ValueError:
        raise DeliveryError(f"FEATUREAUDIT_SMTP_PORT is {raw_port!r}; expected a port number such as 587") from None
    user = env.get("FEATUREAUDIT_SMTP_USER") or None
    password = env.get("FEATUREAUDIT_SMTP_PASSWORD") or None
    block = env.get("FEATUREAUDIT_SMTP_PASSWORD_BLOCK")
    if password is None and block:
        password = _secret_block(block)
    sender = env.get("FEATUREAUDIT_SMTP_FROM") or (user if user and "@" in user else "featureaudit@localhost")
    return SmtpSettings(host=host, port=port, security=security, user=user, password=password, sender=sender)


def retry_delay_from_env(env: Mapping[str, str] | None = None) -> float:
    """Seconds before the first retry (``FEATUREAUDIT_SMTP_RETRY_DELAY``, default 10); later ones double."""
    raw = (os.environ if env is None else env).get("FEATUREAUDIT_SMTP_RETRY_DELAY", "10")
    try:
        return max(float(raw), 0.0)
    except ValueError:
        raise DeliveryError(f"FEATUREAUDIT_SMTP_RETRY_DELAY is {raw!r}; expected seconds such as 10") from None


def check_recipients(recipients: list[str]) -> list[str]:
    """Plain ``user@host`` addresses, or a DeliveryError naming the bad one."""
    out = []
    for raw in recipients:
        parsed = getaddresses([raw])
        if len(parsed) != 1 or "@" not in parsed[0][1] or any(c in parsed[0][1] for c in " \r\n<>,;"):
            raise DeliveryError(f"--email-to: {raw!r} is not an email address such as reviewer@example.com")
        out.append(parsed[0][1])
    if not out:
        raise DeliveryError("--email-to: no recipients given")
    return out


def build_message(folder: str | Path, recipients: list[str], sender: str) -> EmailMessage:
    """The email for one run folder: subject with model, version and verdict; text and HTML; the PDF attached."""
    from tasks.render import environment

    folder = Path(folder)
    try:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        pdf = (folder / "report.pdf").read_bytes()
    except (OSError, json.JSONDecodeError) as exc:
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


def email_context(results: dict[str, Any], folder: Path) -> dict[str, Any]:
    """What the email says, decided here from ``results.json``; the templates only format it."""
    model, version = results["model"]["name"], results["model"]["version"]
    methods = results.get("methods", {})
    return {
        "subject": f"featureaudit: {model} {version} — {results['verdict']}",
        "model": model,
        "version": version,
        "verdict": results["verdict"],
        "verdict_rule": results.get("verdict_rule", ""),
        "verdict_reason": results.get("verdict_reason", ""),
        "status": results.get("status", "complete"),
        "methods": [{"name": name, "status": m["status"], "error": m.get("error") or m.get("reason")}
                    for name, m in methods.items()],
        "warnings": [w["message"] for w in results.get("warnings", [])],
        "sampling": results.get("test_rows", {}).get("note"),
        "run_id": results["run"]["id"],
        "folder": str(folder),
        "attachment": f"featureaudit-{model}-{version}-{results['run']['id']}.pdf",
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
    lines += [f"  - {m['name']}: {m['status']}" + (f" ({m['error']})" if m["error"] else "") for m in context["methods"]]
    lines += ["", "Warnings:" if context["warnings"] else "No warnings."]
    lines += [f"  - {w}" for w in context["warnings"]]
    lines += ["", f"The full report is attached ({context['attachment']}) and kept at {context['folder']}."]
    return "\n".join(lines) + "\n"


def send_message(settings: SmtpSettings, message: EmailMessage) -> None:
    """Send ``message`` over SMTP (STARTTLS, implicit TLS or plain), logging in when a user is set."""
    context = ssl.create_default_context()
    try:
        if settings.security == "ssl":
            client: smtplib.SMTP = smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeout, context=context)
        else:
            client = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout)
        with client:
            if settings.security == "starttls":
                client.starttls(context=context)
            if settings.user:
                client.login(settings.user, settings.password or "")
            client.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        raise DeliveryError(
            f"could not send the report via {settings.host}:{settings.port} ({settings.security}): {_describe(exc)}"
        ) from None


def check_delivery(recipients: list[str]) -> list[str]:
    """Fail fast, before any method runs: the recipients are addresses and the SMTP settings are complete."""
    smtp_settings_from_env()
    return check_recipients(recipients)


@task(name="check-delivery")
def check_delivery_task(recipients: list[str]) -> list[str]:
    """Check the email settings and recipients before the audit starts."""
    return check_delivery(recipients)


@task(name="email-report", retries=RETRIES, retry_delay_seconds=exponential_backoff(backoff_factor=10))
def email_report_task(folder: str, recipients: list[str]) -> int:
    """Email the run folder's PDF to ``recipients``; retried with backoff when the server is unreachable."""
    settings = smtp_settings_from_env()
    message = build_message(folder, recipients, settings.sender)
    try:
        send_message(settings, message)
    except DeliveryError as exc:
        raise DeliveryError(f"{exc}; the report is kept at {folder}") from None
    get_run_logger().info("emailed %s to %d recipient(s) via %s:%d", message["Subject"], len(recipients),
                          settings.host, settings.port)
    return len(recipients)


def email_task_from_env():
    """``email_report_task`` with its backoff from ``FEATUREAUDIT_SMTP_RETRY_DELAY``."""
    return email_report_task.with_options(retry_delay_seconds=exponential_backoff(backoff_factor=retry_delay_from_env()))


def _secret_block(name: str) -> str:
    from prefect.blocks.system import Secret

    try:
        return Secret.load(name).get()
    except Exception as exc:  # no server, no such block, wrong type
        raise DeliveryError(f"FEATUREAUDIT_SMTP_PASSWORD_BLOCK: cannot load Prefect Secret block {name!r} "
                            f"({type(exc).__name__})") from None


def _describe(exc: BaseException) -> str:
    """The error without anything the server echoed back from the login (it could hold the password)."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"login refused (SMTP {exc.smtp_code}); check FEATUREAUDIT_SMTP_USER and the password"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return f"recipients refused: {', '.join(exc.recipients)}"
    return f"{type(exc).__name__}: {exc}"

