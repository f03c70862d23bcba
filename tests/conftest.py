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
