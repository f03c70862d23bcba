"""featureaudit run certifies its report when a key is configured; sign adds the reviewers' signatures; verify checks."""

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flows.cli import main
from tests.pki import TestCA


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = TestCA(folder / "ca")
    return {"ca": ca, "other": TestCA(folder / "other", name="another CA"), "preparer": ca.issue("Audit Pipeline"),
            "reviewer": ca.issue("Rita Reviewer", password="s3cret"), "approver": ca.issue("Alan Approver")}


@pytest.fixture(scope="module")
def signed_run(linear_registry, pki, tmp_path_factory):
    """One audit through the command line with a signing key: its report folder."""
    out = tmp_path_factory.mktemp("signed-reports")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FEATUREAUDIT_SIGNING_KEY", str(pki["preparer"].key))
        patch.setenv("FEATUREAUDIT_SIGNING_CERT", str(pki["preparer"].cert))
        assert main(["run", "--registry", str(linear_registry), "--model", "linear", "--out", str(out),
                     "--methods", "weights,permutation"]) == 0
    [pdf] = out.glob("linear/v1/*/report.pdf")
    return SignedRun(pdf.parent, pdf.read_bytes())


@dataclass(frozen=True)
class SignedRun:
    """The report folder of a run, and its report as certified (before any test signs it)."""

    folder: Path
    certified: bytes


def _sign(report: Path, identity, role: str, *extra: str) -> int:
    args = ["sign", str(report), "--role", role, "--key", str(identity.key), "--cert", str(identity.cert), *extra]
    if identity.password:
        os.environ["REVIEWER_KEY_PASSWORD"] = identity.password
        args += ["--password-env", "REVIEWER_KEY_PASSWORD"]
    try:
        return main(args)
    finally:
        os.environ.pop("REVIEWER_KEY_PASSWORD", None)


def test_run_certifies_then_reviewer_and_approver_sign_and_verify_passes(signed_run, pki, capsys, tmp_path):
    capsys.readouterr()
    report = signed_run.folder / "report.pdf"
    before = report.read_bytes()
    assert _sign(report, pki["reviewer"], "reviewed", "--decision", "approve", "--comment", "ranks match") == 0
    assert capsys.readouterr().out.strip() == str(report)
    assert report.read_bytes().startswith(before)  # an incremental revision: the certified bytes are kept
    assert not [p for p in signed_run.folder.iterdir() if p.name.startswith(".")]  # no temporary file left

    # --out writes elsewhere and leaves the report as it was
    copy = tmp_path / "approved.pdf"
    assert _sign(report, pki["approver"], "approved", "--decision", "reject", "--out", str(copy)) == 0
    assert capsys.readouterr().out.strip() == str(copy) and report.read_bytes() != copy.read_bytes()
    assert _sign(report, pki["approver"], "approved", "--name", "Alan Approver", "--decision", "approve") == 0
    capsys.readouterr()

    assert main(["verify", str(report), "--trust", str(pki["ca"].cert_path)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert captured.err == ""
    assert [line.split(":")[0] for line in lines[:3]] == ["Prepared by", "Reviewed by", "Approved by"]
    assert lines[0].startswith("Prepared by: Audit Pipeline; signed ") and "certification, valid; trusted" in lines[0]
    assert "changed after it: form filling and signing only" in lines[0]
    assert lines[1].endswith("valid; trusted; changed after it: form filling and signing only; decision: approve; "
                             "comment: ranks match")
    assert "changed after it: none; decision: approve" in lines[2]
    assert lines[3] == f"{signed_run.folder / 'results.json'}: the same as the results.json embedded in the report"

    assert main(["verify", str(report)]) == 0
    assert all("trust not checked" in line for line in capsys.readouterr().out.splitlines()[:3])


def test_verify_names_each_problem_on_stderr_and_exits_1(signed_run, pki, capsys, tmp_path):
    report = tmp_path / "report.pdf"  # the certified report as written (another test signs the run's own copy)
    report.write_bytes(signed_run.certified)
    assert main(["verify", str(report), "--trust", str(pki["other"].cert_path)]) == 1
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("featureaudit: error: ")
    assert "does not chain to a CA given with --trust" in errors[0]

    changed = tmp_path / "results.json"
    changed.write_bytes((signed_run.folder / "results.json").read_bytes().replace(b'"seed": 0', b'"seed": 1', 1))
    assert main(["verify", str(report), "--results", str(changed)]) == 1
    assert capsys.readouterr().err == (f"featureaudit: error: {changed} differs from the results.json embedded in "
                                       f"{report}\n")


def test_sign_refuses_a_signed_role_with_one_line_exit_2(signed_run, pki, capsys, tmp_path):
    report = tmp_path / "report.pdf"
    report.write_bytes(signed_run.certified)
    assert _sign(report, pki["reviewer"], "reviewed") == 0
    capsys.readouterr()
    assert _sign(report, pki["reviewer"], "reviewed") == 2
    err = capsys.readouterr().err
    assert err == f"featureaudit: error: {report}: 'Reviewed by' is signed already; a role is signed once\n"


def test_verify_prints_no_control_characters_from_the_pdf(signed_run, pki, capsys, tmp_path):
    report = tmp_path / "report.pdf"
    report.write_bytes(signed_run.certified)
    assert _sign(report, pki["approver"], "approved", "--name", "Alan\x1b]0;owned\x07", "--comment", "ok\x1b[2J") == 0
    capsys.readouterr()
    assert main(["verify", str(report)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "Approved by: Alan?]0;owned? (Alan Approver)" in out and "comment: ok?[2J" in out


def test_sign_refuses_an_unset_password_variable_and_an_unreadable_report(pki, tmp_path, capsys):
    reviewer = pki["reviewer"]
    code = main(["sign", str(tmp_path / "report.pdf"), "--role", "reviewed", "--key", str(reviewer.key), "--cert",
                 str(reviewer.cert), "--password-env", "NO_SUCH_VARIABLE_HERE"])
    assert code == 2
    assert capsys.readouterr().err == ("featureaudit: error: --password-env NO_SUCH_VARIABLE_HERE: the environment "
                                       "variable NO_SUCH_VARIABLE_HERE is not set\n")
    assert main(["verify", str(tmp_path / "report.pdf")]) == 2
    assert "report.pdf: cannot read it (No such file or directory)" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["run", "--model", "linear"], ["serve"]])
def test_a_key_that_cannot_sign_stops_run_and_serve_before_anything_starts(linear_registry, pki, tmp_path, capsys,
                                                                           monkeypatch, command):
    monkeypatch.setenv("FEATUREAUDIT_SIGNING_KEY", str(pki["reviewer"].key))
    monkeypatch.setenv("FEATUREAUDIT_SIGNING_CERT", str(pki["reviewer"].cert))
    monkeypatch.setenv("FEATUREAUDIT_SIGNING_KEY_PASSWORD", "not it")
    out = tmp_path / "out"
    code = main([command[0], "--registry", str(linear_registry), *command[1:], "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "FEATUREAUDIT_SIGNING_KEY_PASSWORD does not decrypt FEATUREAUDIT_SIGNING_KEY" in err
    assert not out.exists()


def test_a_prefect_secret_block_holds_the_key(pki, monkeypatch):
    from prefect.blocks.system import Secret

    from tasks.report.signing import SigningError, check_signing

    approver = pki["approver"]
    Secret(value={"key": approver.key.read_text(), "cert": approver.cert.read_text()}).save(
        "featureaudit-signing-test", overwrite=True)
    env = {"FEATUREAUDIT_SIGNING_SECRET": "featureaudit-signing-test"}
    assert check_signing(env).common_name == "Alan Approver"
    assert check_signing(env, secrets=False) is None  # the command line leaves it to the flow's first task
    with pytest.raises(SigningError,
                       match="FEATUREAUDIT_SIGNING_SECRET: cannot load Prefect Secret block 'no-such-block'"):
        check_signing({"FEATUREAUDIT_SIGNING_SECRET": "no-such-block"})


def test_demo_signs_with_its_own_labelled_key_and_puts_the_settings_back(tmp_path, monkeypatch):
    from tasks.demo import demo_signing
    from tasks.report.signing import check_signing

    monkeypatch.setenv("FEATUREAUDIT_SIGNING_SECRET", "someone-elses-block")
    with demo_signing(tmp_path / "demo-signing"):
        signer = check_signing()
        assert signer.demo and signer.common_name == "featureaudit demo pipeline"
        assert "FEATUREAUDIT_SIGNING_SECRET" not in os.environ
    assert os.environ["FEATUREAUDIT_SIGNING_SECRET"] == "someone-elses-block"
    assert "FEATUREAUDIT_SIGNING_KEY" not in os.environ
    assert sorted(p.name for p in (tmp_path / "demo-signing").iterdir()) == ["demo-signing.cert.pem",
                                                                           "demo-signing.key.pem"]


@pytest.fixture(scope="module")
def tsa_identity(pki):
    return pki["ca"].issue_timestamping()


def test_sign_with_a_timestamp_authority_verifies_with_its_time_trusted(signed_run, pki, tsa_identity, capsys,
                                                                          tmp_path):
    from tests.tsa import tsa_server

    report = tmp_path / "report.pdf"
    report.write_bytes(signed_run.certified)
    stated = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)  # not the signer's clock
    with tsa_server(tsa_identity, at=stated) as tsa:
        assert _sign(report, pki["approver"], "approved", "--decision", "approve", "--timestamp-url", tsa.url) == 0
    assert tsa.requests and all(request["cert_req"].native for request in tsa.requests)  # the TSA's certificate too
    capsys.readouterr()

    assert main(["verify", str(report), "--trust", str(pki["ca"].cert_path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    [line] = [line for line in captured.out.splitlines() if line.startswith("Approved by: Alan Approver")]
    assert f"; signed {stated:%Y-%m-%d %H:%M:%S} UTC (timestamped); valid; trusted; changed after it: none" in line
    assert "(signer's clock)" in captured.out.splitlines()[0]  # the certification was not timestamped

    assert main(["verify", str(report)]) == 0
    assert "(timestamped); valid; trust not checked" in capsys.readouterr().out


def test_a_timestamp_from_an_authority_outside_trust_is_named(signed_run, pki, capsys, tmp_path):
    from tests.tsa import tsa_server

    report = tmp_path / "report.pdf"
    report.write_bytes(signed_run.certified)
    with tsa_server(pki["other"].issue_timestamping("another TSA")) as tsa:
        assert _sign(report, pki["approver"], "approved", "--timestamp-url", tsa.url) == 0
    capsys.readouterr()
    assert main(["verify", str(report), "--trust", str(pki["ca"].cert_path)]) == 1
    captured = capsys.readouterr()
    assert "(timestamped by an authority not trusted); valid; trusted" in captured.out
    assert captured.err == (f"featureaudit: error: {report}: the timestamp authority of the Approved by signature does "
                            "not chain to a CA given with --trust, so its signing time is not established; add that "
                            "authority's CA\n")
    assert main(["verify", str(report), "--trust", str(pki["ca"].cert_path), "--trust",
                 str(pki["other"].cert_path)]) == 0


@pytest.mark.parametrize("answer, reason", [
    ("down", "Cannot connect to host 127.0.0.1"),
    ("garbage", "the answer is not an RFC 3161 timestamp response"),
    ("rejection", "the authority answered 'rejection': policy not accepted; unaccepted_policy"),
    ("hang", "no answer within 1 s"),
])
def test_sign_with_a_failing_timestamp_authority_is_one_line_exit_2_and_writes_nothing(
        signed_run, pki, tsa_identity, capsys, tmp_path, monkeypatch, answer, reason):
    from tests.tsa import closed_port_url, tsa_server

    monkeypatch.setattr("tasks.report.signing.TIMESTAMP_TIMEOUT_S", 1)  # the hanging authority: give up after 1 s, not 20
    report = tmp_path / "report.pdf"
    report.write_bytes(signed_run.certified)
    copy = tmp_path / "signed.pdf"
    with contextlib.ExitStack() as stack:
        url = closed_port_url() if answer == "down" else stack.enter_context(tsa_server(tsa_identity,
                                                                                         answer=answer)).url
        codes = [_sign(report, pki["reviewer"], "reviewed", "--timestamp-url", url),
                 _sign(report, pki["reviewer"], "reviewed", "--timestamp-url", url, "--out", str(copy))]
    assert codes == [2, 2]
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert captured.out == "" and len(errors) == 2 and errors[0] == errors[1]
    assert errors[0].startswith(f"featureaudit: error: --timestamp-url {url}: no timestamp obtained (")
    assert reason in errors[0] and errors[0].endswith("); check the URL or sign without it")
    assert report.read_bytes() == signed_run.certified and sorted(p.name for p in tmp_path.iterdir()) == ["report.pdf"]
