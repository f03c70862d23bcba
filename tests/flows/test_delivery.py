"""The audit flow end to end with email (a real SMTP server on loopback), partial runs and the row cap."""

import io
import json
import re
from pathlib import Path

import pypdf
import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from flows.audit import audit_model
from tasks.methods.table import AuditOptions
from tasks.report.deliver import email_task_from_env
from tests import helpers
from tests.smtp import free_port, make_certificates, smtp_server

PASSWORD = "s3cret-Pa55word-xyz"


def pdf_text(path: Path) -> str:
    reader = pypdf.PdfReader(io.BytesIO(path.read_bytes()))
    return re.sub(r"\s+", " ", " ".join(page.extract_text() for page in reader.pages))


def flow_logs(flow_run_id) -> str:
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def email_attempts(flow_run_id) -> int:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    (email,) = [r for r in runs if r.name.startswith("email-report")]
    return email.run_count


@pytest.fixture
def smtp_env(monkeypatch):
    def configure(port, **extra):
        monkeypatch.setenv("FEATUREAUDIT_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("FEATUREAUDIT_SMTP_PORT", str(port))
        monkeypatch.setenv("FEATUREAUDIT_SMTP_SECURITY", "none")
        monkeypatch.setenv("FEATUREAUDIT_SMTP_FROM", "audit@example.com")
        monkeypatch.setenv("FEATUREAUDIT_SMTP_RETRY_DELAY", "0.2")
        for key, value in extra.items():
            monkeypatch.setenv(key, value)

    return configure


def test_report_is_emailed_with_the_pdf_and_the_password_appears_nowhere(linear_registry, tmp_path, smtp_env):
    Secret(value=PASSWORD).save("featureaudit-smtp-password", overwrite=True)
    with smtp_server(user="audit-bot", password=PASSWORD) as (inbox, port):
        smtp_env(port, FEATUREAUDIT_SMTP_USER="audit-bot", FEATUREAUDIT_SMTP_PASSWORD_BLOCK="featureaudit-smtp-password")
        state = audit_model(registry=str(linear_registry), model="linear", out=str(tmp_path),
                            options=AuditOptions(methods=("weights", "permutation"), max_test_rows=500),
                            email_to=["reviewer@example.com", "Lead <lead@example.com>"], return_state=True)
    assert state.is_completed() and state.name == "Completed"
    folder = Path(state.result())
    results = json.loads((folder / "results.json").read_text())
    (message,) = inbox.messages
    assert inbox.envelopes[0][1] == ["reviewer@example.com", "lead@example.com"]
    assert message["Subject"] == f"featureaudit: linear v1 — {results['verdict']}"
    assert "Verdict on the weight-based ranking" in message.get_body(("html",)).get_content()
    (attachment,) = list(message.iter_attachments())
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == (folder / "report.pdf").read_bytes()
    # the row cap: 4,000 test rows, 500 used, and the report says so
    assert results["status"] == "complete"
    assert results["test_rows"] | {"note": None} == {"in_file": 4000, "used": 500, "sampled": True, "cap": 500,
                                                     "seed": 0, "note": None}
    assert "4,000 rows, over the cap of 500" in pdf_text(folder / "report.pdf")
    assert "4,000 rows, over the cap of 500" in message.get_body(("plain",)).get_content()
    for path in folder.iterdir():
        assert PASSWORD.encode() not in path.read_bytes(), path.name
    assert PASSWORD not in flow_logs(state.state_details.flow_run_id)


def test_unreachable_smtp_is_retried_then_fails_the_run_and_keeps_the_report(linear_registry, tmp_path, smtp_env):
    port = free_port()  # nothing listens here
    smtp_env(port)
    state = audit_model(registry=str(linear_registry), model="linear", out=str(tmp_path),
                        options=AuditOptions(methods=("weights",)),
                        email_to=["reviewer@example.com"], return_state=True)
    assert state.is_failed()
    assert f"could not send the report via 127.0.0.1:{port}" in state.message
    assert "the report is kept at" in state.message
    (folder,) = (tmp_path / "linear" / "v1").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["report.html", "report.pdf", "results.json"]
    assert email_attempts(state.state_details.flow_run_id) == 4  # the first try and 3 retries with backoff


def test_wrong_password_is_tried_once_and_fails_the_run_with_one_line(linear_registry, tmp_path, smtp_env):
    with smtp_server(user="audit-bot", password=PASSWORD) as (inbox, port):
        smtp_env(port, FEATUREAUDIT_SMTP_USER="audit-bot", FEATUREAUDIT_SMTP_PASSWORD="not-the-password-987")
        state = audit_model(registry=str(linear_registry), model="linear", out=str(tmp_path),
                        options=AuditOptions(methods=("weights",)),
                            email_to=["reviewer@example.com"], return_state=True)
    assert state.is_failed()
    assert inbox.auth_attempts == 1 and inbox.connections == 1 and not inbox.messages
    assert email_attempts(state.state_details.flow_run_id) == 1
    (folder,) = (tmp_path / "linear" / "v1").iterdir()
    assert state.message.endswith(f"could not send the report via 127.0.0.1:{port} (none): login refused (SMTP 535); "
                                  f"check FEATUREAUDIT_SMTP_USER and the password (not retried); "
                                  f"the report is kept at {folder}")
    assert "\n" not in state.message and "not-the-password-987" not in state.message


@pytest.fixture(scope="module")
def report_folder(linear_registry, tmp_path_factory):
    """One report on disk, for the email task alone."""
    state = audit_model(registry=str(linear_registry), model="linear", out=str(tmp_path_factory.mktemp("out")),
                        options=AuditOptions(methods=("weights",)), return_state=True)
    return state.result()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def test_untrusted_certificate_is_not_retried(report_folder, certs, smtp_env):
    with smtp_server(tls="starttls", certs=certs) as (inbox, port):
        smtp_env(port, FEATUREAUDIT_SMTP_SECURITY="starttls")
        state = email_task_from_env()(report_folder, ["reviewer@example.com"], return_state=True)
    assert state.is_failed() and inbox.connections == 1  # retries were allowed, and none was made
    assert "the server's certificate is not trusted" in state.message
    assert "set FEATUREAUDIT_SMTP_CA_FILE" in state.message and f"the report is kept at {report_folder}" in state.message


def test_certificate_trusted_through_the_ca_file_setting(report_folder, certs, smtp_env):
    with smtp_server(tls="starttls", certs=certs) as (inbox, port):
        smtp_env(port, FEATUREAUDIT_SMTP_SECURITY="starttls", FEATUREAUDIT_SMTP_CA_FILE=str(certs.ca))
        state = email_task_from_env()(report_folder, ["reviewer@example.com"], return_state=True)
    assert state.is_completed() and inbox.connections == 1
    (message,) = inbox.messages
    assert message["Subject"].startswith("featureaudit: linear v1")


def test_missing_smtp_host_fails_before_any_method_runs(linear_registry, tmp_path, monkeypatch):
    monkeypatch.delenv("FEATUREAUDIT_SMTP_HOST", raising=False)
    state = audit_model(registry=str(linear_registry), model="linear", out=str(tmp_path),
                        options=AuditOptions(methods=("weights",)),
                        email_to=["reviewer@example.com"], return_state=True)
    assert state.is_failed() and "FEATUREAUDIT_SMTP_HOST is not set" in state.message
    assert not (tmp_path / "linear").exists()


@pytest.fixture(scope="module")
def uncompiled_registry(tmp_path_factory):
    """A model saved without compile(): it predicts, but cannot be retrained, so ablation fails."""
    import keras

    root = tmp_path_factory.mktemp("uncompiled-registry")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.layers[0].set_weights([helpers.LINEAR_WEIGHTS.astype("float32")[:, None], __import__("numpy").zeros(1, "float32")])
    helpers.write_version(root, "uncompiled", "v1", model, helpers.linear_frame(500, seed=1),
                          helpers.linear_frame(500, seed=2), metric="mse", training={"epochs": 1})
    return root


def test_a_failing_method_gives_a_partial_report_with_the_error(uncompiled_registry, tmp_path):
    state = audit_model(registry=str(uncompiled_registry), model="uncompiled", out=str(tmp_path),
                        options=AuditOptions(methods=("weights", "permutation", "ablation"), seeds=1),
                        return_state=True)
    assert state.is_completed() and state.name == "Partial" and "ablation failed" in state.message
    folder = Path(state.result())
    results = json.loads((folder / "results.json").read_text())
    assert results["status"] == "partial"
    assert results["methods"]["ablation"]["status"] == "failed" and results["methods"]["ablation"]["error"]
    assert results["methods"]["permutation"]["status"] == "ok"
    reader = pypdf.PdfReader(io.BytesIO((folder / "report.pdf").read_bytes()))
    assert "Run status: partial" in re.sub(r"\s+", " ", reader.pages[0].extract_text())
    assert "This method failed" in pdf_text(folder / "report.pdf")
