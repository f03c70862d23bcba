import json
import re

import pytest
from prefect.states import Failed

from tasks.core.errors import DeliveryError
from tasks.report.deliver import (
    PermanentDeliveryError,
    SmtpSettings,
    build_message,
    check_recipients,
    email_context,
    retry_unless_permanent,
    send_message,
    smtp_settings_from_env,
    text_body,
)
from tasks.report.document import read_results
from tests.smtp import free_port, make_certificates, smtp_server

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A private CA and a server certificate it signed for 127.0.0.1."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def run_folder(tmp_path):
    folder = tmp_path / "credit" / "v3" / "20260101T020000Z-abc123"
    folder.mkdir(parents=True)
    results = {
        "model": {"name": "credit", "version": "v3"},
        "run": {"id": "20260101T020000Z-abc123"},
        "status": "partial",
        "verdict": "disagree",
        "verdict_rule": "rule <b>text</b>",
        "methods": {"weights": {"status": "ok", "error": None},
                    "shap": {"status": "failed", "error": "RuntimeError: <script>boom</script>"}},
        "warnings": [{"message": "'income' ranks #7 by weights & #1 by permutation", "feature": "income",
                      "kind": "under-ranked"}],
    }
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "report.pdf").write_bytes(PDF)
    return folder


def test_message_has_subject_bodies_and_pdf_attachment(run_folder):
    message = build_message(run_folder, ["a@example.com", "b@example.com"], "audit@example.com")
    assert message["Subject"] == "featureaudit: credit v3 — disagree"
    assert message["To"] == "a@example.com, b@example.com"
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert "'income' ranks #7 by weights & #1 by permutation" in text and "SHAP (mean |φ|): failed" in text
    assert "&#39;income&#39; ranks #7 by weights &amp; #1" in html  # autoescaped, never raw
    assert "<script>" not in html and "&lt;script&gt;" in html
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF


def test_settings_from_env_defaults_and_password_kept_out_of_repr():
    settings = smtp_settings_from_env({"FEATUREAUDIT_SMTP_HOST": "mail.example.com", "FEATUREAUDIT_SMTP_USER": "bot",
                                       "FEATUREAUDIT_SMTP_PASSWORD": "hunter2-secret"})
    assert (settings.port, settings.security, settings.password) == (587, "starttls", "hunter2-secret")
    assert "hunter2-secret" not in repr(settings) and "hunter2-secret" not in str(settings)
    assert smtp_settings_from_env({"FEATUREAUDIT_SMTP_HOST": "h", "FEATUREAUDIT_SMTP_SECURITY": "ssl"}).port == 465


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "FEATUREAUDIT_SMTP_HOST is not set"),
        ({"FEATUREAUDIT_SMTP_HOST": "h", "FEATUREAUDIT_SMTP_SECURITY": "tls1"}, "expected starttls, ssl or none"),
        ({"FEATUREAUDIT_SMTP_HOST": "h", "FEATUREAUDIT_SMTP_PORT": "smtp"}, "FEATUREAUDIT_SMTP_PORT is 'smtp'"),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(DeliveryError, match=message):
        smtp_settings_from_env(env)


def test_recipients_are_checked():
    assert check_recipients(["Reviewer <r@example.com>"]) == ["r@example.com"]
    with pytest.raises(DeliveryError, match="'not-an-address' is not an email address"):
        check_recipients(["not-an-address"])


def test_message_arrives_at_a_real_smtp_server_with_login(run_folder):
    with smtp_server(user="bot", password="hunter2-secret") as (inbox, port):
        settings = SmtpSettings(host="127.0.0.1", port=port, security="none", user="bot", password="hunter2-secret",
                                sender="audit@example.com")
        send_message(settings, build_message(run_folder, ["r@example.com"], settings.sender))
    (received,) = inbox.messages
    assert inbox.envelopes == [("audit@example.com", ["r@example.com"])]
    assert received["Subject"] == "featureaudit: credit v3 — disagree"
    (attachment,) = list(received.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == (run_folder / "report.pdf").read_bytes()


def test_wrong_password_is_one_login_and_a_permanent_error_without_the_password(run_folder):
    with smtp_server(user="bot", password="right") as (inbox, port):
        settings = SmtpSettings(host="127.0.0.1", port=port, security="none", user="bot", password="wrong-pw-1234", timeout=10)
        with pytest.raises(PermanentDeliveryError,
                           match=r"login refused \(SMTP 535\); check FEATUREAUDIT_SMTP_USER") as caught:
            send_message(settings, build_message(run_folder, ["r@example.com"], settings.sender))
    assert inbox.auth_attempts == 1  # smtplib's login() would try every mechanism offered: two failures per try
    assert "wrong-pw-1234" not in str(caught.value) and "\n" not in str(caught.value) and not inbox.messages


def test_no_login_where_the_server_requires_one_is_permanent(run_folder):
    with smtp_server(user="bot", password="right") as (inbox, port):
        settings = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=10)
        with pytest.raises(PermanentDeliveryError, match=r"requires a login \(SMTP 530\); set FEATUREAUDIT_SMTP_USER"):
            send_message(settings, build_message(run_folder, ["r@example.com"], settings.sender))


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_untrusted_certificate_is_permanent_after_one_connection(run_folder, certs, security):
    with smtp_server(tls=security, certs=certs) as (inbox, port):
        settings = SmtpSettings(host="127.0.0.1", port=port, security=security, timeout=10)
        with pytest.raises(PermanentDeliveryError, match=f"127.0.0.1:{port} \\({security}\\): the server's certificate "
                           r"is not trusted \(.+\); set FEATUREAUDIT_SMTP_CA_FILE"):
            send_message(settings, build_message(run_folder, ["r@example.com"], settings.sender))
    assert inbox.connections == 1 and not inbox.messages


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_private_ca_trusted_through_the_ca_file_setting(run_folder, certs, security):
    with smtp_server(user="bot", password="pw", tls=security, certs=certs) as (inbox, port):
        settings = smtp_settings_from_env({
            "FEATUREAUDIT_SMTP_HOST": "127.0.0.1", "FEATUREAUDIT_SMTP_PORT": str(port), "FEATUREAUDIT_SMTP_SECURITY": security,
            "FEATUREAUDIT_SMTP_USER": "bot", "FEATUREAUDIT_SMTP_PASSWORD": "pw", "FEATUREAUDIT_SMTP_CA_FILE": str(certs.ca)})
        send_message(settings, build_message(run_folder, ["r@example.com"], "audit@example.com"))
    (received,) = inbox.messages
    assert received["Subject"] == "featureaudit: credit v3 — disagree" and inbox.auth_attempts == 1


def test_tls_to_a_plain_server_is_permanent(run_folder):
    with smtp_server() as (inbox, port):
        settings = SmtpSettings(host="127.0.0.1", port=port, security="ssl", timeout=10)
        with pytest.raises(PermanentDeliveryError, match="TLS handshake failed .+ check that FEATUREAUDIT_SMTP_SECURITY"):
            send_message(settings, build_message(run_folder, ["r@example.com"], settings.sender))


def test_refused_recipients_are_permanent(run_folder):
    with smtp_server(refuse=("gone@example.com",)) as (inbox, port):
        settings = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=10)
        with pytest.raises(PermanentDeliveryError, match=r"recipients refused: gone@example.com \(SMTP 550 5.1.1 no such"):
            send_message(settings, build_message(run_folder, ["gone@example.com"], settings.sender))
        # one refused among others: they have it, and sending again would give them a second copy
        with pytest.raises(PermanentDeliveryError,
                           match="refused recipients gone@example.com .+ the other recipients have it"):
            send_message(settings, build_message(run_folder, ["gone@example.com", "r@example.com"], settings.sender))
    assert inbox.envelopes == [(settings.sender, ["r@example.com"])]


def test_unreachable_server_is_a_transient_delivery_error_naming_host_and_port(run_folder):
    port = free_port()
    settings = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=5)
    with pytest.raises(DeliveryError, match=f"could not send the report via 127.0.0.1:{port}") as caught:
        send_message(settings, build_message(run_folder, ["r@example.com"], settings.sender))
    assert not isinstance(caught.value, PermanentDeliveryError)


def test_only_transient_failures_are_retried():
    assert retry_unless_permanent(None, None, Failed(data=DeliveryError("ConnectionRefusedError")))
    assert not retry_unless_permanent(None, None, Failed(data=PermanentDeliveryError("login refused (SMTP 535)")))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "which is not a file"),
        ("not a certificate\n", "which holds no PEM certificate \\(NO_CERTIFICATE_OR_CRL_FOUND\\)"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "which holds no PEM certificate"),
    ],
)
def test_bad_ca_file_names_the_setting_and_the_path(tmp_path, content, message):
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_text(content)
    env = {"FEATUREAUDIT_SMTP_HOST": "h", "FEATUREAUDIT_SMTP_CA_FILE": str(path)}
    expected = f"FEATUREAUDIT_SMTP_CA_FILE is {re.escape(str(path))}, {message}.*: set it to a PEM"
    with pytest.raises(PermanentDeliveryError, match=expected):
        smtp_settings_from_env(env)


def test_text_body_lists_methods_and_warnings(run_folder):
    context = email_context(read_results(run_folder / "results.json"), run_folder)
    body = text_body(context)
    assert body.startswith("credit v3 — disagree\n") and "Run 20260101T020000Z-abc123: partial" in body
    assert "  - First-layer weights |W|: ok\n" in body  # titles, as the report says them, not keys


def test_a_damaged_results_json_is_not_sent_and_not_retried(run_folder):
    (run_folder / "results.json").write_text('{"model": {"name": "credit", "vers')
    with pytest.raises(PermanentDeliveryError, match=re.escape(f"cannot send the report in {run_folder}: "
                                                               f"{run_folder / 'results.json'} is not JSON")):
        build_message(run_folder, ["a@example.com"], "audit@example.com")
