import base64
import io
import re
from datetime import datetime, timezone

import numpy as np
import pypdf
import pytest

from tasks.core.result import ImportanceResult
from tasks.registry.versions import resolve_version
from tasks.report.render import RunInfo, build_context, environment, render_html, render_pdf
from tasks.report.verdict import compare

EVIL = "<script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture(scope="module")
def context(linear_registry):
    version = resolve_version(linear_registry, "linear")
    features = (*version.features[:3], EVIL)
    object.__setattr__(version, "features", features)
    weights = ImportanceResult.from_samples("weights", "weight-based", features, np.array([3.0, 2.0, 1.0, 0.01]))
    rng = np.random.default_rng(0)
    perm = ImportanceResult.from_samples(
        "permutation", "behavioural", features, np.array([[1.0], [2.0], [0.5], [9.0]]) + 0.01 * rng.standard_normal((4, 5))
    )
    failed = ImportanceResult.not_ok("shap", "behavioural", features, status="failed", reason="RuntimeError: explainer broke")
    results = [weights, perm, failed]
    run = RunInfo(run_id="20260101T000000Z-abc123", started=datetime(2026, 1, 1, tzinfo=timezone.utc), seed=0)
    return build_context(version, results, compare(results), run)


def test_templates_have_the_named_blocks():
    source = environment().loader.get_source(environment(), "report.html.j2")[0]
    for block in ("summary", "warnings", "rankings", "agreement", "methods", "appendix"):
        assert f"{{% block {block} %}}" in source


def test_feature_names_with_markup_render_as_text(context):
    html = render_html(context)
    assert "<script>alert(1)" not in html and "onerror=alert" not in html.replace("onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_pdf_text_shows_verdict_warning_and_failed_method(context):
    pdf = pypdf.PdfReader(io.BytesIO(render_pdf(render_html(context))))
    text = " ".join(page.extract_text() for page in pdf.pages)
    text = re.sub(r"\s+", " ", text)
    assert "Verdict on the weight-based ranking" in text
    assert "the weights under-rank it" in text
    # one voice: the first page's sentence names the same feature as the warning below it
    first = re.sub(r"\s+", " ", pdf.pages[0].extract_text())
    assert "Verdict on the weight-based ranking: disagree disagree: the first-layer weights |W| misrank" in first
    assert "no disagreement" not in text
    # what the verdict cannot see is said on the first page: SHAP failed here, so nothing about interactions is known
    assert ("Interactions are not assessed in this run: no method measures whether features act jointly, and SHAP"
            in first)
    assert "This method failed: RuntimeError: explainer broke" in text
    assert f"page 1 of {len(pdf.pages)}" in text
    # the running header names model and version on every page but the first, which shows it once in the body
    pages = [page.extract_text() for page in pdf.pages]
    assert len(pages) > 1
    assert pages[0].count("featureaudit · linear v1") == 1
    assert all("featureaudit · linear v1" in page for page in pages[1:])


def test_pdf_renderer_fetches_no_local_file(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1))
    fig.add_subplot().plot([0, 1])
    fig.savefig(tmp_path / "secret.png")
    inline = "data:image/png;base64," + base64.b64encode((tmp_path / "secret.png").read_bytes()).decode()
    with_file = render_pdf(f'<html><body><p>x</p><img src="file://{tmp_path}/secret.png"></body></html>')
    with_data = render_pdf(f'<html><body><p>x</p><img src="{inline}"></body></html>')
    images = lambda data: sum(len(p.images) for p in pypdf.PdfReader(io.BytesIO(data)).pages)  # noqa: E731
    assert images(with_data) == 1
    assert images(with_file) == 0


def test_correlated_clusters_are_shown_beside_their_members(linear_registry):
    from tasks.methods.permutation import PermutationDetails
    from tasks.subject.clusters import ClusterRecord

    version = resolve_version(linear_registry, "linear")
    features = version.features
    cluster = ClusterRecord(name="a+b", members=["a", "b"], min_abs_rho=0.93, importance=7.5, std=0.2,
                            low=7.2, high=7.8, member_importances={"a": 1.1, "b": 0.9})
    perm = ImportanceResult.from_samples("permutation", "behavioural", features, np.ones((4, 3)),
                                         details=PermutationDetails(n_repeats=3, seed=0, n_rows=100,
                                                                    cluster_threshold=0.8, baseline=1.0, groups=[],
                                                                    clusters=[cluster]))
    run = RunInfo(run_id="r", started=datetime(2026, 1, 1, tzinfo=timezone.utc), seed=0)
    html = re.sub(r"\s+", " ", render_html(build_context(version, [perm], compare([perm]), run)))
    assert "Correlated cluster (permuted jointly)" in html
    assert "<td>a, b</td><td>0.93</td><td>7.5</td><td>[7.2, 7.8]</td> <td>a 1.1; b 0.9</td>" in html


def test_charts_stay_bounded_for_many_features():
    from PIL import Image

    from tasks.core.charts import MAX_FEATURES, importance_bars, rank_lines

    names = tuple(f"f{j}" for j in range(500))
    rng = np.random.default_rng(0)
    many = ImportanceResult.from_samples("permutation", "behavioural", names, rng.random((500, 3)))
    weights = ImportanceResult.from_samples("weights", "weight-based", names, rng.random(500))
    few = ImportanceResult.from_samples("permutation", "behavioural", names[:MAX_FEATURES], rng.random((MAX_FEATURES, 3)))
    height = lambda png: Image.open(io.BytesIO(png)).size[1]  # noqa: E731
    assert height(importance_bars(many)) == height(importance_bars(few))
    assert height(rank_lines(weights, [many])) == height(rank_lines(weights.subset(names[:MAX_FEATURES]), [few]))


def test_a_wide_model_shows_each_methods_top_features_and_summarises_the_rest(linear_registry):
    version = resolve_version(linear_registry, "linear")
    names = tuple(f"f{j}" for j in range(300))
    object.__setattr__(version, "features", names)
    rng = np.random.default_rng(0)
    weight_values = np.round(rng.random(300), 1)  # ties: about 30 features share each weight
    weights = ImportanceResult.from_samples("weights", "weight-based", names, weight_values)
    drivers = np.zeros(300)
    drivers[250:260] = np.arange(10, 0, -1)  # the behaviour's drivers, ranked low by the weights
    perm = ImportanceResult.from_samples("permutation", "behavioural", names,
                                         drivers[:, None] + 0.01 * rng.standard_normal((300, 5)))
    results = [weights, perm]
    run = RunInfo(run_id="20260101T000000Z-abc123", started=datetime(2026, 1, 1, tzinfo=timezone.utc), seed=0)
    context = build_context(version, results, compare(results), run)
    shown = {row["feature"] for row in context["rankings"]["rows"]}
    first = lambda r: {names[j] for j in np.argsort(-r.importances_mean, kind="stable")[:25]}  # noqa: E731
    assert shown == first(weights) | first(perm) and len(shown) <= 50
    html = render_html(context)
    assert f"{300 - len(shown)} more features, ranked below #25 by every method, are not shown" in html
    hidden_weight = max(v for n, v in zip(names, weight_values) if n not in shown)
    assert context["rankings"]["hidden_largest"][0]["largest"] == pytest.approx(hidden_weight)


def test_many_correlated_clusters_show_the_most_important_with_their_first_members(linear_registry):
    from tasks.methods.permutation import PermutationDetails
    from tasks.subject.clusters import ClusterRecord

    version = resolve_version(linear_registry, "linear")
    names = tuple(f"f{j}" for j in range(800))
    object.__setattr__(version, "features", names)
    clusters = [ClusterRecord(name=f"c{i}", members=list(names[20 * i:20 * i + 20]), min_abs_rho=0.9,
                              importance=float(i), std=0.1, low=i - 0.2, high=i + 0.2,
                              member_importances={n: 0.5 for n in names[20 * i:20 * i + 20]})
                for i in range(40)]
    details = PermutationDetails(n_repeats=5, seed=0, n_rows=100, cluster_threshold=0.8, baseline=1.0,
                                 groups=[], clusters=clusters)
    rng = np.random.default_rng(0)
    perm = ImportanceResult.from_samples("permutation", "behavioural", names, rng.random((800, 5)), details=details)
    weights = ImportanceResult.from_samples("weights", "weight-based", names, rng.random(800))
    run = RunInfo(run_id="20260101T000000Z-abc123", started=datetime(2026, 1, 1, tzinfo=timezone.utc), seed=0)
    context = build_context(version, [weights, perm], compare([weights, perm]), run)
    shown = next(m for m in context["methods"] if m["name"] == "permutation")["clusters"]
    assert [c.name for c in shown] == [f"c{i}" for i in range(15, 40)]  # the 25 most important, in their order
    assert all(len(c.members) == 12 and len(c.member_importances) == 12 for c in shown)
    html = render_html(context)
    assert html.count("and 8 more") == 25 and "15 less important clusters not shown" in html


def test_a_string_column_is_coloured_by_level_with_a_legend_not_on_the_low_high_scale():
    from matplotlib import colormaps
    from PIL import Image

    from tasks.core.charts import level_colours, shap_beeswarm
    from tasks.methods.shap import beeswarm_data
    from tasks.subject.adapter import Column

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, 200).astype(float)  # the vocabulary's alphabetical codes: high, low, mid
    X = np.column_stack([codes, rng.normal(size=200)])
    phi = X * [0.5, 0.3]
    columns = (Column("band", "string", True, ("high", "low", "mid")), Column("income", "number", False))
    swarm = beeswarm_data(("band", "income"), phi, X, phi.sum(axis=1), order=np.array([0, 1]), columns=columns)
    assert swarm.levels == [["high", "low", "mid"], None]
    colours = level_colours(codes)
    assert len({tuple(c) for c in colours}) == 3  # one colour per level, the same for every dot of a level
    assert all(tuple(c) == tuple(colours[0]) for c, code in zip(colours, codes) if code == codes[0])
    # none is the scale's blue ("low") or red ("high")
    ends = [np.array(colormaps["coolwarm"](x)) for x in (0.0, 1.0)]
    assert min(np.abs(c - end).max() for c in colours for end in ends) > 0.2
    height = lambda png: Image.open(io.BytesIO(png)).size[1]  # noqa: E731
    plain = shap_beeswarm(swarm.features, swarm.phi, swarm.value)
    assert height(shap_beeswarm(swarm.features, swarm.phi, swarm.value, swarm.levels)) > height(plain)  # the legend


def test_feature_names_wrap_at_underscores_and_dots_never_inside_a_word():
    from tasks.report.render import breakable

    assert str(breakable("s5_band.mean")) == "s5_<wbr>band.<wbr>mean"
    assert str(breakable("<b>_x")) == "&lt;b&gt;_<wbr>x"  # escaped first
    name = "serum_triglyceride_band.level_mean"
    html = environment().from_string(
        "<table style='width: 300px'><tr><td style='width: 60px'>{{ name|breakable }}</td><td>x</td></tr></table>"
    ).render(name=name)
    lines = pypdf.PdfReader(io.BytesIO(render_pdf(html))).pages[0].extract_text().split("\n")
    parts = [line for line in lines if line != "x"]
    assert len(parts) > 1 and "".join(parts) == name
    assert all(part.endswith(("_", ".")) for part in parts[:-1])


def test_weight_ranks_moving_by_one_place_say_place(context):
    stable = dict(context, weight_stability={"n_trainings": 3, "max_rank_range": 1, "same_top_k": True, "k": 2,
                                             "features": []})
    html = re.sub(r"\s+", " ", render_html(stable))
    assert "moved by up to 1 place;" in html


def test_the_rank_charts_names_are_spread_so_none_overlaps():
    from tasks.core.charts import labels_spread

    assert labels_spread([1, 1, 2, 3, 9], 2, 20) == [1, 3, 5, 7, 9]  # pushed down one label's height apart
    assert labels_spread([9, 10], 3, 10) == [7, 10]  # a column that would run past the last rank moves up
    spread = labels_spread(sorted(np.random.default_rng(0).integers(1, 200, 25).tolist()), 7.5, 200)
    assert min(np.diff(spread)) >= 7.5 - 1e-9 and spread[-1] <= 200
