import json

import pytest

from tasks.deliver import (
    SmtpSettings,
    build_message,
    check_recipients,
    send_message,
    smtp_settings_from_env,
    text_body,
    email_context,
)
from tasks.errors import DeliveryError
from tests.smtp import free_port, smtp_server

PDF = b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"


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
        "warnings": [{"message": "'income' ranks #7 by weights & #1 by permutation"}],
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
    assert "'income' ranks #7 by weights & #1 by permutation" in text and "shap: failed" in text
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


def test_wrong_password_is_a_clear_error_without_the_password(run_folder):
    with smtp_server(user="bot", password="right") as (inbox, port):
        settings = SmtpSettings(host="127.0.0.1", port=port, security="none", user="bot", password="wrong-pw-1234", timeout=10)
        with pytest.raises(DeliveryError, match="login refused") as caught:
            send_message(settings, build_message(run_folder, ["r@example.com"], settings.sender))
    assert "wrong-pw-1234" not in str(caught.value) and not inbox.messages


def test_unreachable_server_is_a_delivery_error_naming_host_and_port(run_folder):
    port = free_port()
    settings = SmtpSettings(host="127.0.0.1", port=port, security="none", timeout=5)
    with pytest.raises(DeliveryError, match=f"could not send the report via 127.0.0.1:{port}"):
        send_message(settings, build_message(run_folder, ["r@example.com"], settings.sender))


def test_text_body_lists_methods_and_warnings(run_folder):
    context = email_context(json.loads((run_folder / "results.json").read_text()), run_folder)
    body = text_body(context)
    assert body.startswith("credit v3 — disagree\n") and "Run 20260101T020000Z-abc123: partial" in body
