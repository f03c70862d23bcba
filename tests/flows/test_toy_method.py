"""A new method is one module and one table entry: a toy method, registered by a fixture alone, runs end to end."""

import io
import json
import re
from contextlib import redirect_stdout
from pathlib import Path

import pypdf
import pytest

from flows.audit import audit_model
from tasks.methods.table import METHODS, AuditOptions, parse_options
from tests import toy_method


@pytest.fixture(params=[True, False], ids=["judged", "shown"])
def toy(request, monkeypatch):
    monkeypatch.setitem(METHODS, "toy", toy_method.method(judged=request.param))
    return request.param


def _audit(registry: Path, out: Path, **options) -> dict:
    folder = Path(audit_model(registry=str(registry), model="linear", out=str(out),
                              options=AuditOptions(methods=("weights", "toy"), **options)))
    return {"folder": folder, "results": json.loads((folder / "results.json").read_text())}


def test_the_command_line_offers_it_and_its_options(toy):
    from flows.cli import main

    help_text = io.StringIO()
    with redirect_stdout(help_text), pytest.raises(SystemExit):
        main(["run", "--help"])
    unwrapped = "".join(help_text.getvalue().split())  # argparse wraps the long default list
    assert "weights,permutation,ablation,shap,lime,effects,interactions,occlusion,gradcam,toy" in unwrapped
    assert "--toy-draws" in help_text.getvalue() and "bootstrap draws of the toy method" in help_text.getvalue()
    assert parse_options(methods=["toy"], toy_draws=5).of("toy").toy_draws == 5
    with pytest.raises(Exception, match="--toy-draws 1: "):
        parse_options(toy_draws=1)


def test_it_runs_is_stored_reused_and_judged_only_when_marked(toy, linear_registry, tmp_path):
    first = _audit(linear_registry, tmp_path, toy_draws=10)
    second = _audit(linear_registry, tmp_path, toy_draws=10)
    methods = first["results"]["methods"]
    ranking = sorted(methods["toy"]["features"], key=lambda f: f["rank"])
    assert [f["feature"] for f in ranking] == ["b", "a", "c", "noise"]  # the linear model's |w·σ| order
    assert methods["toy"]["details"] == {"draws": 10}
    assert second["results"]["run"]["reused"].keys() == {"weights", "toy"}  # stored, and reused unchanged
    assert json.dumps(second["results"]["methods"]) == json.dumps(methods)
    assert ("toy" in first["results"]["rank_evidence"]) is toy
    text = " ".join(page.extract_text() for page in pypdf.PdfReader(first["folder"] / "report.pdf").pages)
    text = re.sub(r"\s+", " ", text)
    assert "Toy |corr| with the target" in text  # its result among the methods
    assert "Toy correlation, in a section of its own" in text and "Strongest: b at " in text  # its own section
