"""Signed reports, end to end on real PDFs: WeasyPrint renders, pyHanko certifies, signs and validates, pypdf reads back."""

import io
import re
from datetime import datetime, timezone

import numpy as np
import pypdf
import pytest
import weasyprint

from tasks.core.result import ImportanceResult
from tasks.registry.versions import resolve_version
from tasks.report.render import RunInfo, build_context, render_html, render_pdf, results_document
from tasks.report.signing import (
    DEMO_LABEL,
    SigningError,
    SigningKey,
    check_key,
    demo_key,
    key_from_files,
    sign_pdf,
    signing_key_from_env,
    verify_pdf,
)
from tasks.report.verdict import compare
from tests.pki import TestCA


def _key(identity) -> SigningKey:
    return key_from_files(identity.key, identity.cert, identity.password, key_label="--key", cert_label="--cert",
                          password_label="--password-env")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, other = TestCA(folder / "ca"), TestCA(folder / "other", name="another CA")
    return {"ca": ca, "preparer": ca.issue("Audit Pipeline"), "reviewer": ca.issue("Rita Reviewer", password="s3cret"),
            "approver": ca.issue("Alan Approver"), "outsider": other.issue("Oscar Outsider")}


@pytest.fixture(scope="module")
def report(linear_registry):
    """What the render step makes from a small fixed context: results.json and a function rendering the PDF."""
    version = resolve_version(linear_registry, "linear")
    features = version.features[:4]
    object.__setattr__(version, "features", features)
    weights = ImportanceResult.from_samples("weights", "weight-based", features, np.array([3.0, 2.0, 1.0, 0.01]))
    rng = np.random.default_rng(0)
    perm = ImportanceResult.from_samples(
        "permutation", "behavioural", features, np.array([[1.0], [2.0], [0.5], [9.0]]) + 0.01 * rng.standard_normal((4, 5)))
    failed = ImportanceResult.not_ok("shap", "behavioural", features, status="failed", reason="RuntimeError: broke")
    results = [weights, perm, failed]
    comparison = compare(results)
    run = RunInfo(run_id="20260101T000000Z-abc123", started=datetime(2026, 1, 1, tzinfo=timezone.utc), seed=0)
    data = results_document(version, results, comparison, run).to_bytes()

    def render(key: SigningKey | None, embedded: bytes = data) -> bytes:
        signer = check_key(key) if key is not None else None
        html = render_html(build_context(version, results, comparison, run, signer=signer))
        return render_pdf(html, {"results.json": embedded}, certify=key)

    return data, render


@pytest.fixture(scope="module")
def certified(report, pki):
    return report[1](_key(pki["preparer"]))


@pytest.fixture(scope="module")
def fully_signed(certified, pki):
    reviewed = sign_pdf(certified, "reviewed", _key(pki["reviewer"]), source="report.pdf", decision="approve",
                        comment="numbers checked against the notebook")
    return sign_pdf(reviewed, "approved", _key(pki["approver"]), source="report.pdf", name="Alan Approver, CRO",
                    decision="approve")


def _text(pdf: bytes) -> str:
    return re.sub(r"\s+", " ", " ".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages))


@pytest.mark.parametrize("stage", ["certified", "fully_signed"])
def test_signed_report_stays_pdfa_3u_with_results_attached(stage, report, request):
    reader = pypdf.PdfReader(io.BytesIO(request.getfixturevalue(stage)))
    root = reader.trailer["/Root"]
    xmp = root["/Metadata"].get_object().get_data().decode("utf-8")
    assert re.search(r"pdfaid:part[^0-9]*3", xmp) and re.search(r"pdfaid:conformance[^A-Z]*U", xmp)
    # PDF/A: the info dictionary and the XMP metadata agree (title, creator tool, producer)
    info = reader.trailer["/Info"]
    assert re.search(r'pdf:Producer="([^"]*)"', xmp).group(1) == info["/Producer"]
    assert re.search(r'xmp:CreatorTool="([^"]*)"', xmp).group(1) == info["/Creator"] == f"featureaudit with WeasyPrint {weasyprint.__version__}"
    assert re.search(r'<rdf:li xml:lang="x-default">([^<]*)</rdf:li>', xmp).group(1) == info["/Title"]
    assert "/OutputIntents" in root
    assert reader.attachments["results.json"] == [report[0]]
    specs = [ref.get_object() for ref in root["/AF"]]  # WeasyPrint lists the one file twice
    assert specs and all(s["/AFRelationship"] == "/Data" and s["/F"] == "results.json" for s in specs)
    # certified, allowing form filling and signatures only (DocMDP P=2)
    assert root["/Perms"]["/DocMDP"]["/Reference"][0]["/TransformParams"]["/P"] == 2
    # every widget is printable, never hidden (PDF/A), and has an appearance; its font is embedded
    widgets = [annot.get_object() for page in reader.pages for annot in page.get("/Annots", [])
               if annot.get_object()["/Subtype"] == "/Widget"]
    assert sorted(w["/T"] for w in widgets) == ["featureaudit_approved", "featureaudit_prepared", "featureaudit_reviewed"]
    assert all(w["/F"] & 4 and not w["/F"] & 3 and "/N" in w["/AP"] for w in widgets)
    stamp = next(w for w in widgets if w["/T"] == "featureaudit_prepared")["/AP"]["/N"]
    fonts = list(_walk_fonts(stamp))
    assert fonts and all("/FontFile2" in f["/DescendantFonts"][0].get_object()["/FontDescriptor"] for f in fonts)


def _walk_fonts(xobject):
    """The fonts used by a form XObject and the form XObjects it draws."""
    resources = xobject.get("/Resources", {})
    yield from (f.get_object() for f in resources.get("/Font", {}).values())
    for child in resources.get("/XObject", {}).values():
        yield from _walk_fonts(child.get_object())


def test_fields_lie_over_the_signoff_cells(certified):
    reader = pypdf.PdfReader(io.BytesIO(certified))
    last = reader.pages[-1]
    rects = {w.get_object()["/T"]: [float(v) for v in w.get_object()["/Rect"]] for w in last.get("/Annots", [])}
    assert set(rects) == {"featureaudit_prepared", "featureaudit_reviewed", "featureaudit_approved"}
    width = float(last.mediabox.width)
    prepared, reviewed, approved = (rects[f"featureaudit_{r}"] for r in ("prepared", "reviewed", "approved"))
    # one column at the right (the Signature column), three rows stacked top to bottom, none overlapping
    assert prepared[0] == reviewed[0] == approved[0] and prepared[0] > width / 2
    assert prepared[1] > reviewed[3] - 1 and reviewed[1] > approved[3] - 1
    assert all(r[3] - r[1] >= 20 and r[2] - r[0] >= 60 for r in rects.values())
    # and the row each field lies on is its role's: text of the cells to its left, read back from the page
    rows = []  # (text, baseline in PDF points): WeasyPrint draws in CSS pixels under a flipping matrix
    last.extract_text(visitor_text=lambda text, cm, tm, font, size: rows.append((text.strip(), cm[3] * tm[5] + cm[5])))
    for role, rect in (("Prepared by", prepared), ("Reviewed by", reviewed), ("Approved by", approved)):
        [baseline] = [y for text, y in rows if text.startswith(role)]
        assert rect[1] <= baseline <= rect[3], (role, baseline, rect)


def test_certify_review_approve_verifies_with_three_trusted_signatures(fully_signed, pki, report):
    outcome = verify_pdf(fully_signed, source="report.pdf", trust={"ca.pem": pki["ca"].cert_path.read_bytes()}, results=report[0])
    assert outcome.ok, outcome.problems
    assert [c.role for c in outcome.signatures] == ["Prepared by", "Reviewed by", "Approved by"]
    assert all(c.valid and c.trusted and c.allowed for c in outcome.signatures)
    prepared, reviewed, approved = outcome.signatures
    assert prepared.certification and not reviewed.certification
    assert reviewed.signer == "Rita Reviewer" and approved.signer == "Alan Approver, CRO (Alan Approver)"
    assert reviewed.decision == "approve" and reviewed.comment == "numbers checked against the notebook"
    assert approved.changes == "none" and prepared.changes == "form filling and signing only"
    assert outcome.unsigned == ()
    assert all(abs((datetime.now(timezone.utc) - c.signed_at).total_seconds()) < 600 for c in outcome.signatures)
    assert re.search(r"Rita Reviewer; signed 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC \(signer's clock\); valid; trusted;",
                     reviewed.line())
    # without trust anchors the same signatures are valid, and trust is said not to be checked
    untrusted = verify_pdf(fully_signed, source="report.pdf")
    assert untrusted.ok and all(c.trusted is None and "trust not checked" in c.line() for c in untrusted.signatures)


def test_a_changed_byte_after_signing_is_named(fully_signed):
    data = bytearray(fully_signed)
    offset = data.index(b"Verdict") if b"Verdict" in data else 12  # inside the signed bytes either way
    data[offset] ^= 0x01
    outcome = verify_pdf(bytes(data), source="report.pdf")
    assert not outcome.ok
    assert any("the Prepared by signature by Audit Pipeline is not valid" in p for p in outcome.problems)
    assert any("the Approved by signature by Alan Approver, CRO (Alan Approver) is not valid" in p
               for p in outcome.problems)


def test_an_annotation_added_after_the_last_signature_is_named(fully_signed):
    from pyhanko.pdf_utils import generic
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter

    writer = IncrementalPdfFileWriter(io.BytesIO(fully_signed))
    page_ref, _ = writer.find_page_for_modification(0)
    annot = writer.add_object(generic.DictionaryObject({
        generic.NameObject("/Type"): generic.NameObject("/Annot"),
        generic.NameObject("/Subtype"): generic.NameObject("/Text"),
        generic.NameObject("/Rect"): generic.ArrayObject([generic.NumberObject(v) for v in (50, 50, 80, 80)]),
        generic.NameObject("/Contents"): generic.TextStringObject("the verdict should read 'agree'"),
    }))
    page = page_ref.get_object()
    page[generic.NameObject("/Annots")] = generic.ArrayObject([*page.get("/Annots", []), annot])
    writer.update_container(page)
    out = io.BytesIO()
    writer.write(out)
    outcome = verify_pdf(out.getvalue(), source="report.pdf")
    assert all(c.valid for c in outcome.signatures)  # the signed bytes are untouched: the new revision is the problem
    [problem] = outcome.problems
    assert problem.startswith("report.pdf was changed after the Approved by signature beyond form filling and signing")


def test_a_signer_outside_the_trusted_ca_is_named(certified, pki):
    signed = sign_pdf(certified, "reviewed", _key(pki["outsider"]), source="report.pdf")
    outcome = verify_pdf(signed, source="report.pdf", trust={"ca.pem": pki["ca"].cert_path.read_bytes()})
    assert outcome.problems == ("report.pdf: the Reviewed by signer Oscar Outsider does not chain to a CA given "
                                "with --trust",)
    assert outcome.unsigned == ("Approved by",)
    with pytest.raises(SigningError, match="--trust notes.txt holds no PEM certificate"):
        verify_pdf(signed, source="report.pdf", trust={"notes.txt": b"not a certificate"})


def test_results_beside_the_report_must_equal_the_embedded_one(certified, report):
    changed = report[0].replace(b'"verdict": "', b'"verdict": "x', 1)
    outcome = verify_pdf(certified, source="run/report.pdf", results=changed, results_source="run/results.json")
    assert outcome.problems == ("run/results.json differs from the results.json embedded in run/report.pdf",)
    assert verify_pdf(certified, source="run/report.pdf", results=report[0]).ok


def test_embedded_results_are_checked_against_the_text(certified, report):
    text = _text(certified)
    assert "Run 20260101T000000Z-abc123: verdict" in text and "SHAP (mean |φ|): failed." in text
    # a report whose embedded results.json ranks other features first than its text is named
    import json

    data = json.loads(report[0])
    top = sorted(data["methods"]["permutation"]["features"], key=lambda r: r["rank"])
    top[0]["rank"], top[1]["rank"] = top[1]["rank"], top[0]["rank"]
    outcome = verify_pdf(report[1](None, json.dumps(data, indent=2).encode()), source="report.pdf")
    assert outcome.problems[-1].startswith("the results.json embedded in report.pdf does not match its text: "
                                           "'Permutation importance: ok, top "), outcome.problems


def test_signing_refuses_unsigned_reports_foreign_pdfs_and_signed_roles(report, certified, fully_signed, pki):
    key = _key(pki["reviewer"])
    with pytest.raises(SigningError, match="plain.pdf is not certified by featureaudit"):
        sign_pdf(report[1](None), "reviewed", key, source="plain.pdf")
    with pytest.raises(SigningError, match="report.pdf: 'Reviewed by' is signed already"):
        sign_pdf(fully_signed, "reviewed", key, source="report.pdf")
    with pytest.raises(SigningError, match="other.pdf has no 'Approved by' signature field"):
        sign_pdf(_certified_without_fields(pki), "approved", key, source="other.pdf")
    with pytest.raises(SigningError, match="--role prepared: choose one of reviewed, approved"):
        sign_pdf(certified, "prepared", key, source="report.pdf")


def _certified_without_fields(pki) -> bytes:
    """A PDF certified in a field named as ours, but without the reviewers' fields."""
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.sign import fields, signers

    from tasks.report.signing import _pyhanko_signer

    writer = IncrementalPdfFileWriter(io.BytesIO(render_pdf("<html><body><p>other</p></body></html>")))
    meta = signers.PdfSignatureMetadata(field_name="featureaudit_prepared", certify=True,
                                        docmdp_permissions=fields.MDPPerm.FILL_FORMS)
    out = io.BytesIO()
    signers.PdfSigner(meta, _pyhanko_signer(_key(pki["preparer"]))).sign_pdf(writer, output=out)
    return out.getvalue()


def test_unsigned_and_demo_reports_say_so(report, tmp_path):
    assert "This document is unsigned" in _text(report[1](None))
    key, cert = demo_key(tmp_path)
    demo = report[1](key_from_files(key, cert, key_label="k", cert_label="c", password_label="p"))
    assert DEMO_LABEL in _text(demo)
    outcome = verify_pdf(demo, source="report.pdf")
    assert outcome.ok and "demonstration key: not evidence of authorship" in outcome.signatures[0].line()
    assert demo_key(tmp_path) == (key, cert) and key.stat().st_mode & 0o077 == 0  # made once, private


@pytest.mark.parametrize("case, message", [
    ("wrong password", "FEATUREAUDIT_SIGNING_KEY_PASSWORD does not decrypt FEATUREAUDIT_SIGNING_KEY .*; check the password"),
    ("no password", "FEATUREAUDIT_SIGNING_KEY .* is encrypted; set FEATUREAUDIT_SIGNING_KEY_PASSWORD"),
    ("mismatch", "FEATUREAUDIT_SIGNING_CERT .* is not the certificate of FEATUREAUDIT_SIGNING_KEY"),
    ("expired", r"FEATUREAUDIT_SIGNING_CERT .* expired on \d{4}-\d\d-\d\d; renew the certificate"),
    ("unreadable", "FEATUREAUDIT_SIGNING_KEY: cannot read .*missing.pem"),
    ("not a key", "FEATUREAUDIT_SIGNING_KEY .* holds no PEM private key"),
    ("key only", "FEATUREAUDIT_SIGNING_KEY is set but FEATUREAUDIT_SIGNING_CERT is not"),
])
def test_a_misconfigured_key_is_one_line_naming_the_setting(pki, tmp_path, case, message):
    reviewer, approver = pki["reviewer"], pki["approver"]
    env = {"FEATUREAUDIT_SIGNING_KEY": str(reviewer.key), "FEATUREAUDIT_SIGNING_CERT": str(reviewer.cert),
           "FEATUREAUDIT_SIGNING_KEY_PASSWORD": "wrong"}
    if case == "no password":
        del env["FEATUREAUDIT_SIGNING_KEY_PASSWORD"]
    elif case == "mismatch":
        env = {"FEATUREAUDIT_SIGNING_KEY": str(approver.key), "FEATUREAUDIT_SIGNING_CERT": str(reviewer.cert)}
    elif case == "expired":
        old = pki["ca"].issue("Old Signer", expired=True)
        env = {"FEATUREAUDIT_SIGNING_KEY": str(old.key), "FEATUREAUDIT_SIGNING_CERT": str(old.cert)}
    elif case == "unreadable":
        env["FEATUREAUDIT_SIGNING_KEY"] = str(tmp_path / "missing.pem")
    elif case == "not a key":
        env = {"FEATUREAUDIT_SIGNING_KEY": str(approver.cert), "FEATUREAUDIT_SIGNING_CERT": str(approver.cert)}
    elif case == "key only":
        env = {"FEATUREAUDIT_SIGNING_KEY": str(approver.key)}
    with pytest.raises(SigningError, match=message):
        check_key(signing_key_from_env(env))
    assert signing_key_from_env({}) is None


def test_signing_after_approval_keeps_the_approval_and_a_changed_approved_byte_is_named(certified, pki, tmp_path):
    from tasks.registry.versions import sha256_file
    from tasks.report.approval import append_entry, last_approved, verify_log

    folder = tmp_path / "m" / "v1" / "r1"
    folder.mkdir(parents=True)
    pdf = folder / "report.pdf"
    pdf.write_bytes(certified)
    (folder / "results.json").write_text("{}")
    append_entry(tmp_path, name="Alan Approver", decision="approve", comment="", model="m", version="v1", run_id="r1",
                 report_sha256=sha256_file(pdf), report_bytes=len(certified))
    pdf.write_bytes(sign_pdf(certified, "approved", _key(pki["approver"]), source="report.pdf", decision="approve"))
    assert len(pdf.read_bytes()) > len(certified)  # the signature is an appended revision
    assert verify_log(tmp_path, "m")[1] == []

    tampered = bytearray(pdf.read_bytes())
    tampered[len(certified) // 2] ^= 1  # a byte of the approved revision
    pdf.write_bytes(bytes(tampered))
    (problem,) = verify_log(tmp_path, "m")[1]
    assert "report.pdf: its sha256 is not the one approved by Alan Approver" in problem
    assert last_approved(tmp_path, "m") is None


def test_a_signature_stamps_font_declares_its_glyph_widths_in_thousandths_of_an_em(fully_signed):
    """A PDF font's /W widths are thousandths of an em: written in the font's own units (DejaVu's 2,048 to the em),
    the stamp was drawn letter-spaced at twice its width and cut off at the cell's edge."""
    from fontTools.ttLib import TTFont

    fonts = {}

    def collect(obj, depth=0):
        obj = obj.get_object() if hasattr(obj, "get_object") else obj
        if depth > 10:
            return
        if isinstance(obj, dict):
            if obj.get("/Subtype") == "/Type0":
                fonts[id(obj)] = obj
                return
            for key, value in obj.items():
                if key not in ("/Parent", "/P"):
                    collect(value, depth + 1)
        elif isinstance(obj, list):
            for value in obj:
                collect(value, depth + 1)

    page = pypdf.PdfReader(io.BytesIO(fully_signed)).pages[-1]
    for annotation in page.get("/Annots", []):
        collect(annotation.get_object().get("/AP"))
    assert fonts  # the prepared and reviewed stamps draw text
    for font in fonts.values():
        descendant = font["/DescendantFonts"][0].get_object()
        program = TTFont(io.BytesIO(descendant["/FontDescriptor"].get_object()["/FontFile2"].get_object().get_data()))
        per_em, advances = program["head"].unitsPerEm, program["hmtx"].metrics
        order = program.getGlyphOrder()
        widths = descendant["/W"]
        for first, listed in zip(widths[::2], widths[1::2]):
            for gid, width in enumerate(listed, start=int(first)):
                assert width == pytest.approx(advances[order[gid]][0] * 1000 / per_em, abs=1)
