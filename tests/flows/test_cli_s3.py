"""`featureaudit run --registry s3://…` against a real S3 server on loopback (moto)."""

import json

import pytest

from flows.cli import main

ARGS = ["--model", "linear", "--methods", "weights,permutation"]


def _document(out):
    (path,) = out.rglob("results.json")
    return json.loads(path.read_text())


def test_an_s3_registry_is_audited_like_the_same_files_in_a_folder_and_cached(
        linear_registry, s3_linear_registry, audit_cache, tmp_path):
    assert main(["run", "--registry", str(linear_registry), "--out", str(tmp_path / "folder"), *ARGS]) == 0
    assert main(["run", "--registry", s3_linear_registry, "--out", str(tmp_path / "s3"), *ARGS]) == 0
    folder, remote = _document(tmp_path / "folder"), _document(tmp_path / "s3")
    assert remote["model"]["registry"] == s3_linear_registry and "registry" not in folder["model"]
    assert remote["model"]["sha256"] == folder["model"]["sha256"]
    assert all(path.startswith(str(audit_cache)) for path in remote["model"]["paths"].values())
    assert {m: e["features"] for m, e in remote["methods"].items()} == {
        m: e["features"] for m, e in folder["methods"].items()}
    assert remote["verdict"] == folder["verdict"]

    cached = [p for p in audit_cache.rglob("*") if p.is_file()]
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cached}
    assert {p.name for p in cached} >= {"model.keras", "test.parquet", "train.parquet", "manifest.json"}
    assert main(["run", "--registry", s3_linear_registry, "--out", str(tmp_path / "again"), *ARGS]) == 0
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in cached} == stamps  # nothing downloaded again
    assert _document(tmp_path / "again")["methods"] == remote["methods"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "nope"], "registry s3://linear-audits/registry has no model 'nope'"),
        (["--model", "linear", "--version", "v9"], "model 'linear' in s3://linear-audits/registry has no version 'v9'"),
    ],
)
def test_a_missing_s3_model_or_version_is_exit_2_naming_the_uri(s3_linear_registry, audit_cache, tmp_path, capsys,
                                                                 extra, message):
    code = main(["run", "--registry", s3_linear_registry, "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out").exists()
