"""Shared fixtures: small real registries, built once per session."""

from __future__ import annotations

import os
import tempfile

# Before TensorFlow or Prefect are imported: quiet TF, and keep Prefect's database out of ~/.prefect.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="featureaudit-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import prefect.main  # noqa: E402,F401  Prefect sets up logging on this import: do it now, not inside a capsys test,

#                        or its handlers keep that test's closed stream and the run dies at exit ("lost sys.stderr").
import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(scope="session")
def linear_registry(tmp_path_factory):
    """A linear model y = w·x with independent features: importances known in closed form."""
    root = tmp_path_factory.mktemp("linear-registry")
    helpers.write_version(
        root, "linear", "v1", helpers.linear_model(),
        helpers.linear_frame(4000, seed=1), helpers.linear_frame(2000, seed=2),
        training={"epochs": 5, "batch_size": 128},
    )
    return root


@pytest.fixture(scope="session")
def embedding_registry(tmp_path_factory):
    """A named-input model with an Embedding for the categorical 'region'."""
    root = tmp_path_factory.mktemp("embedding-registry")
    train = helpers.embedding_frame(2000, seed=3)
    helpers.write_version(
        root, "embed", "v1", helpers.train_embedding_model(train),
        helpers.embedding_frame(1000, seed=4), train,
        categorical=["region"], training={"epochs": 5, "batch_size": 128},
    )
    return root


@pytest.fixture(scope="session")
def demo_registry(tmp_path_factory):
    """The demo registry (known drivers; 'income' on a ×100 scale), trained briefly."""
    from tasks.demo import build_demo_registry

    return build_demo_registry(tmp_path_factory.mktemp("demo-registry"), epochs=25)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 server on loopback (moto), with dummy credentials and featureaudit pointed at it."""
    from tests import s3

    saved = {k: os.environ.get(k) for k in (*s3.CREDENTIALS, "FEATUREAUDIT_S3_ENDPOINT_URL")}
    with s3.s3_server() as endpoint:
        os.environ.update(s3.CREDENTIALS, FEATUREAUDIT_S3_ENDPOINT_URL=endpoint)
        try:
            yield endpoint
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="session")
def s3_linear_registry(s3_endpoint, linear_registry):
    """The linear registry's files under s3://linear-audits/registry (read-only: tests that change it copy it)."""
    from tests import s3

    return s3.upload(s3_endpoint, linear_registry, "s3://linear-audits/registry")


@pytest.fixture
def audit_cache(tmp_path, monkeypatch):
    """A fresh FEATUREAUDIT_CACHE for one test."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("FEATUREAUDIT_CACHE", str(folder))
    return folder
