import json
from pathlib import Path

import pytest

from flows.audit import audit_model, with_runner


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local


def _numbers(folder: str) -> dict:
    results = json.loads((Path(folder) / "results.json").read_text())
    return {m: [(r["feature"], r["importance"], r["std"]) for r in v["features"]] for m, v in results["methods"].items()}


def test_dask_cluster_gives_the_same_numbers_as_a_local_run(linear_registry, tmp_path, cluster):
    kwargs = dict(registry=str(linear_registry), model="linear", methods=["weights", "permutation", "ablation"],
                  n_seeds=1, seed=3)
    local = audit_model(out=str(tmp_path / "local"), **kwargs)
    remote = with_runner(cluster.scheduler_address)(out=str(tmp_path / "dask"), **kwargs)
    assert _numbers(remote) == _numbers(local)
    assert set(_numbers(remote)) == {"weights", "weights_scaled", "permutation", "ablation", "weights_retrained"}
