"""Registry backends: the folder one as before, and s3:// against a real S3 server on loopback (moto)."""

import re
import shutil

import pytest

from tasks.core.errors import ModelLoadError, RegistryError
from tasks.registry.base import FolderRegistry, ObjectStoreRegistry
from tasks.registry.versions import list_models, open_registry, resolve_version
from tests import helpers, s3


@pytest.fixture(scope="module")
def versions_registry(tmp_path_factory):
    """v2 and v10 of one linear model (v10 is the newest under natural sort), with different test rows."""
    root = tmp_path_factory.mktemp("versions-registry")
    for version, seed in (("v2", 5), ("v10", 6)):
        helpers.write_version(root, "linear", version, helpers.linear_model(), helpers.linear_frame(200, seed=seed))
    return root


@pytest.fixture(scope="module")
def s3_versions(s3_endpoint, versions_registry):
    return s3.upload(s3_endpoint, versions_registry, "s3://versions/teams/risk")


def test_open_registry_picks_the_backend_from_the_reference(tmp_path):
    assert isinstance(open_registry(tmp_path), FolderRegistry)
    assert isinstance(open_registry("s3://bucket/prefix"), ObjectStoreRegistry)
    with pytest.raises(RegistryError, match="unknown scheme 'ftp://'"):
        open_registry("ftp://host/models")


def test_s3_resolves_the_newest_and_a_named_version_to_local_files(s3_versions, versions_registry, audit_cache):
    newest = resolve_version(s3_versions, "linear")
    named = resolve_version(s3_versions, "linear", "v2")
    assert (newest.version, named.version) == ("v10", "v2")
    for version in (newest, named):
        local = resolve_version(versions_registry, "linear", version.version)
        assert version.uri == s3_versions and local.uri == str(versions_registry.absolute())
        assert version.sha256 == local.sha256 and version.features == local.features
        assert version.folder.is_dir() and version.folder.is_relative_to(audit_cache)
        assert version.model_path == version.folder / "model.keras" and version.model_path.is_file()
        assert version.test_rows == 200
    assert list_models(s3_versions) == ["linear"]


def test_s3_downloads_an_object_once_and_again_when_it_changes(s3_endpoint, versions_registry, audit_cache, tmp_path):
    uri = s3.upload(s3_endpoint, versions_registry, "s3://changing/registry")
    first = ObjectStoreRegistry(uri)
    first.fetch("linear", "v2")
    assert sorted(k.rsplit("/", 1)[1] for k in first.downloaded) == ["manifest.json", "model.keras", "test.parquet"]
    before = resolve_version(uri, "linear", "v2")

    again = ObjectStoreRegistry(uri)
    again.fetch("linear", "v2")
    assert again.downloaded == []  # a cache hit: nothing fetched

    changed = tmp_path / "changed"
    shutil.copytree(versions_registry, changed)
    helpers.linear_model(weights=[1.0, 1.0, 1.0, 1.0]).save(changed / "linear" / "v2" / "model.keras")
    s3.filesystem(s3_endpoint).put_file(str(changed / "linear" / "v2" / "model.keras"),
                                        "changing/registry/linear/v2/model.keras")
    third = ObjectStoreRegistry(uri)
    third.fetch("linear", "v2")
    assert third.downloaded == ["changing/registry/linear/v2/model.keras"]
    after = resolve_version(uri, "linear", "v2")
    assert after.sha256["model.keras"] != before.sha256["model.keras"]
    assert after.sha256["test.parquet"] == before.sha256["test.parquet"]
    assert not list(after.folder.glob("*.part"))  # written through a temp file and a rename


@pytest.mark.parametrize(
    ("reference", "model", "version", "message"),
    [
        ("s3://versions/teams/risk", "nope", None,
         "registry s3://versions/teams/risk has no model 'nope'; models present: linear"),
        ("s3://versions/teams/risk", "linear", "v9",
         "model 'linear' in s3://versions/teams/risk has no version 'v9'; versions present: v2, v10"),
        ("s3://no-such-bucket/models", "linear", None, "registry s3://no-such-bucket/models does not exist"),
        ("s3://versions/teams/risk", "../linear", None, "model name '../linear' is not a plain folder name"),
    ],
)
def test_s3_bad_references_are_one_line_naming_the_uri(s3_versions, audit_cache, reference, model, version, message):
    with pytest.raises(RegistryError, match=re.escape(message)) as raised:
        resolve_version(reference, model, version)
    assert len(str(raised.value).splitlines()) == 1


def test_s3_without_credentials_names_the_setting(s3_versions, audit_cache, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(RegistryError, match=r"s3://versions/teams/risk.*no credentials found; set AWS_ACCESS_KEY_ID"):
        resolve_version(s3_versions, "linear")


def test_s3_model_over_the_size_limit_is_refused_before_download(s3_versions, audit_cache, monkeypatch):
    monkeypatch.setenv("FEATUREAUDIT_MAX_MODEL_BYTES", "100")
    backend = ObjectStoreRegistry(s3_versions)
    with pytest.raises(ModelLoadError, match="s3://versions/teams/risk/linear/v10/model.keras is .* over the limit"):
        backend.fetch("linear")
    assert not any(k.endswith("model.keras") for k in backend.downloaded)


def test_snapshot_names_the_newest_version_and_changes_when_its_files_do(versions_registry, s3_endpoint, tmp_path):
    folder = tmp_path / "registry"
    shutil.copytree(versions_registry, folder)
    uri = s3.upload(s3_endpoint, folder, "s3://snapshots/registry")
    firsts = {}
    for registry in (FolderRegistry(folder), ObjectStoreRegistry(uri)):
        first = firsts[type(registry)] = registry.snapshot("linear")
        assert first["latest"] == "v10" and "model.keras:" in first["latest.stamp"]
        assert registry.snapshot("linear") == first  # nothing changed: the same snapshot
    assert registry.downloaded == []  # the object store's snapshots downloaded nothing

    (folder / "linear" / "v10" / "test.parquet").write_bytes((folder / "linear" / "v2" / "test.parquet").read_bytes())
    rewritten = FolderRegistry(folder).snapshot("linear")
    assert rewritten["latest"] == "v10" and rewritten["latest.stamp"] != firsts[FolderRegistry]["latest.stamp"]
    shutil.copytree(folder / "linear" / "v10", folder / "linear" / "v11")
    assert FolderRegistry(folder).snapshot("linear")["latest"] == "v11"
    s3.upload(s3_endpoint, folder, uri)
    assert ObjectStoreRegistry(uri).snapshot("linear")["latest"] == "v11"
