"""Occlusion and patch permutation on an oracle: 16×16 noise images whose class is decided by one region alone
(a brighter square at pixel rows 4–7, columns 8–11: patch r1c2 of the default 4×4 grid). That patch must rank
first, verified, in both; the rest is noise."""

import json

import numpy as np
import pytest

from flows.cli import main
from tasks.core.ranking import ranking_evidence
from tasks.methods.occlusion import OcclusionDetails, audit_occlusion, section
from tasks.methods.permutation import audit_permutation
from tasks.registry.versions import resolve_version
from tasks.subject.loaded import load_subject

REGION = "r1c2"


@pytest.fixture(scope="module")
def region_registry(tmp_path_factory):
    """A CNN trained (seconds) on 300 images, binary: the class is whether the square at r1c2 is bright."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.random((400, 16, 16, 1)).astype("float32") * 0.5
    y = rng.integers(0, 2, 400)
    x[y == 1, 4:8, 8:12, 0] += 0.5
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalMaxPooling2D(), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(x[:300], y[:300], epochs=10, batch_size=32, verbose=0)
    root = tmp_path_factory.mktemp("images")
    folder = root / "region" / "v1"
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    np.savez(folder / "train.npz", x=x[:300], y=y[:300])
    np.savez(folder / "test.npz", x=x[300:], y=y[300:])
    (folder / "manifest.json").write_text(json.dumps({"modality": "image", "task": "binary",
                                                      "class_names": ["plain", "square"]}))
    return root


def _top(result):
    evidence = ranking_evidence(result)
    return result.features[int(np.argmax(result.importances_mean))], evidence.top_k_verified(1)


def test_occlusion_ranks_the_deciding_region_first_verified(region_registry):
    result = audit_occlusion(load_subject(resolve_version(region_registry, "region")), seed=0)
    assert result.features == tuple(f"r{i}c{j}" for i in range(4) for j in range(4))
    assert result.sampling == "bootstrap" and result.importances.shape == (16, 200)
    assert _top(result) == (REGION, True)
    others = [m for f, m in zip(result.features, result.importances_mean) if f != REGION]
    assert result.low[result.features.index(REGION)] > 10 * max(others)
    assert result.details.cover == "training mean image" and result.details.n_images == 100


def test_occlusion_is_reproducible_and_its_section_draws_the_grid(region_registry):
    subject = load_subject(resolve_version(region_registry, "region"))
    first, again = audit_occlusion(subject, seed=3), audit_occlusion(subject, seed=3)
    np.testing.assert_array_equal(first.importances, again.importances)
    assert not np.array_equal(first.importances, audit_occlusion(subject, seed=4).importances)
    shown = section(first)
    assert shown["grid"] == (4, 4) and shown["chart"].startswith("data:image/png;base64,")
    assert isinstance(first.details, OcclusionDetails) and np.asarray(first.details.mean_image).shape == (16, 16)


def test_patch_permutation_ranks_the_deciding_region_first_verified(region_registry):
    [result, accuracy] = audit_permutation(resolve_version(region_registry, "region"), n_repeats=5, seed=0)
    assert result.features == tuple(f"r{i}c{j}" for i in range(4) for j in range(4))
    assert _top(result) == (REGION, True) and _top(accuracy)[0] == REGION
    assert not result.details.groups and not result.details.clusters


def test_an_image_run_writes_the_occlusion_section_and_skips_the_weights(region_registry, tmp_path):
    out = tmp_path / "out"
    code = main(["run", "--registry", str(region_registry), "--model", "region", "--out", str(out),
                 "--methods", "weights,permutation,occlusion,gradcam"])
    assert code == 0
    [document] = out.glob("region/v1/*/results.json")
    methods = json.loads(document.read_text())["methods"]
    assert {name: m["status"] for name, m in methods.items()} == {"weights": "skipped", "permutation": "ok",
                                                                   "permutation_accuracy": "ok", "occlusion": "ok",
                                                                   "gradcam": "ok"}
    explained = methods["gradcam"]["details"]["images"]
    assert len(explained) == 6 and set(explained[0]["gradcam_shares"]) == {f"r{i}c{j}" for i in range(4) for j in range(4)}
    [top] = [f for f in methods["occlusion"]["features"] if f["rank"] == 1]
    assert top["feature"] == REGION and top["low"] > 0
    [page] = out.glob("region/v1/*/report.html")
    html = page.read_text()
    assert "Occlusion: which regions of the image the model uses" in html and "grid of 4 × 4 patches" in html
    assert html.count('<figure class="saliency">') == 6 and "before its sigmoid" in html


def test_gradcam_explains_the_worst_images_and_one_of_each_class(region_registry):
    from tasks.methods.gradcam import GradcamDetails, audit_gradcam
    from tasks.methods.gradcam import section as gradcam_section

    subject = load_subject(resolve_version(region_registry, "region"))
    result = audit_gradcam(subject, seed=0)
    details = result.details
    assert isinstance(details, GradcamDetails) and result.features == subject.version.units
    selections = [e.selection for e in details.images]
    assert selections == ["highest loss"] * 4 + ["a plain image", "a square image"]
    assert len({e.row for e in details.images}) == 6
    for e in details.images:
        assert sum(e.gradcam_shares.values()) == pytest.approx(1.0) and e.completeness_gap < 0.05
        assert e.class_name == ["plain", "square"][e.explained] and 0 <= e.probability <= 1
    square = [e for e in details.images if e.explained == 1]
    assert square and all(max(e.gradcam_shares, key=e.gradcam_shares.get) == REGION for e in square)
    assert "(Conv2D)" in details.layer and "before its sigmoid" in details.logit
    shown = gradcam_section(result)
    assert len(shown["images"]) == 6 and all(i["chart"].startswith("data:image/png;base64,") for i in shown["images"])
    assert audit_gradcam(subject, seed=0).details.images == details.images


def test_a_cnns_weights_are_not_ranked_and_its_filters_are_shown(region_registry):
    from tasks.methods.weights import FilterDetails, audit_weights
    from tasks.methods.weights import section as weights_section

    [result] = audit_weights(resolve_version(region_registry, "region"))
    assert result.status == "skipped" and "is a convolution: its filters are shared by every position" in result.error
    assert isinstance(result.details, FilterDetails) and result.details.shape == (3, 3, 1, 4)
    assert np.asarray(result.details.kernels).shape == (4, 3, 3)
    assert weights_section(result)["chart"].startswith("data:image/png;base64,")


@pytest.fixture(scope="module")
def mlp_registry(region_registry, tmp_path_factory):
    """A Dense network reading the raw pixels (Flatten first), trained on the same one-region images."""
    import keras

    folder = region_registry / "region" / "v1"
    train, test = np.load(folder / "train.npz"), np.load(folder / "test.npz")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(train["x"], train["y"], epochs=20, batch_size=32, verbose=0)
    root = tmp_path_factory.mktemp("mlp")
    target = root / "mlp" / "v1"
    target.mkdir(parents=True)
    model.save(target / "model.keras")
    np.savez(target / "train.npz", x=train["x"], y=train["y"])
    np.savez(target / "test.npz", x=test["x"], y=test["y"])
    (target / "manifest.json").write_text(json.dumps({"modality": "image", "task": "binary"}))
    return root, model


def test_a_dense_model_on_raw_pixels_gets_a_weight_ranking_of_patches_that_the_verdict_judges(mlp_registry):
    from tasks.methods.weights import audit_weights
    from tasks.report.verdict import compare

    root, model = mlp_registry
    version = resolve_version(root, "mlp")
    naive, scaled = audit_weights(version)
    assert naive.ok and naive.features == version.units
    by_pixel = np.abs(np.asarray(model.layers[1].kernel)).sum(axis=1)  # Flatten is C order: pixel j is row j
    patches = load_subject(version).patches()
    expected = [by_pixel[cols].sum() for cols in patches.values()]
    np.testing.assert_allclose(naive.importances_mean, expected, rtol=1e-5)
    [permutation, _] = audit_permutation(version, n_repeats=5, seed=0)
    occlusion = audit_occlusion(load_subject(version), seed=0)
    comparison = compare([naive, scaled, permutation, occlusion])
    assert comparison.verdict != "not assessed"
    assert {(a.method_a, a.method_b) for a in comparison.agreements} >= {("weights", "permutation"),
                                                                           ("weights", "occlusion")}


def test_the_image_demo_learns_the_digits_and_is_audited(tmp_path):
    import keras

    from tasks.demo import IMAGE_MODEL_NAME, build_image_demo

    registry = build_image_demo(tmp_path / "reg")
    version = resolve_version(registry, IMAGE_MODEL_NAME)
    assert version.image_shape == (8, 8, 1) and version.test_rows == 500 and version.manifest.class_names[9] == "9"
    subject = load_subject(version)
    accuracy = float(np.mean(subject.forward()(subject.test.X).argmax(axis=1) == subject.test.y))
    assert accuracy > 0.9
    assert isinstance(keras.saving.load_model(version.model_path).layers[0], keras.layers.Conv2D)
    out = tmp_path / "out"
    assert main(["run", "--registry", str(registry), "--model", IMAGE_MODEL_NAME, "--out", str(out),
                 "--methods", "weights,occlusion,gradcam"]) == 0
    [page] = out.glob(f"{IMAGE_MODEL_NAME}/v1/*/report.html")
    html = page.read_text()
    assert "the filters, not a ranking" in html and html.count('<figure class="saliency">') == 14  # 4 worst + 10 classes
