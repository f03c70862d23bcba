"""Grad-CAM and integrated gradients: the layer found in a Sequential, a functional and a nested CNN; the logit
differentiated without editing the model; on the one-region oracle, the map's mass where the class is decided;
integrated gradients complete to within 5% at the default steps."""

import numpy as np
import pytest

from tasks.core.errors import ModelLoadError
from tasks.methods.gradcam import Explainer, cell_shares, find_target
from tasks.registry.images import patch_units

SHAPE = (16, 16, 1)


def _region_data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *SHAPE)).astype("float32") * 0.5
    y = rng.integers(0, 2, n)
    x[y == 1, 4:8, 8:12, 0] += 0.5
    return x, y


@pytest.fixture(scope="module")
def region_cnn():
    """Two softmax classes; the class is whether the square at pixel rows 4–7, columns 8–11 (patch r1c2) is bright."""
    import keras

    x, y = _region_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                              keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="last_conv"),
                              keras.layers.GlobalMaxPooling2D(), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x[:300], y[:300], epochs=15, batch_size=32, verbose=0)
    return model, x[300:], y[300:], x[:300].mean(axis=0)


def test_the_layer_is_found_in_sequential_functional_and_nested_models():
    import keras

    sequential = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(2, 3, name="c1"),
                                   keras.layers.Conv2D(2, 3, name="c2"), keras.layers.MaxPooling2D(),
                                   keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    assert find_target(sequential).name == "c2"

    inputs = keras.Input(SHAPE)
    a = keras.layers.Conv2D(2, 3, padding="same", name="left")(inputs)
    b = keras.layers.Conv2D(2, 5, padding="same", name="right")(inputs)
    merged = keras.layers.Conv2D(4, 1, name="merge")(keras.layers.Concatenate()([a, b]))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(merged))
    assert find_target(keras.Model(inputs, out)).name == "merge"

    base_in = keras.Input(SHAPE)
    base_out = keras.layers.Conv2D(4, 3, name="base_conv")(keras.layers.Conv2D(4, 3, name="stem")(base_in))
    base = keras.Model(base_in, base_out, name="base")
    nested = keras.Sequential([keras.Input(SHAPE), base, keras.layers.GlobalAveragePooling2D(),
                               keras.layers.Dense(1, activation="sigmoid")])
    target = find_target(nested)
    assert target.name == "base" and "its last convolution: base_conv" in target.description
    explainer = Explainer(nested)  # the nested map can be differentiated
    maps = explainer.gradcam(np.random.default_rng(0).random((3, *SHAPE)).astype("float32"), np.array([0, 1, 1]))
    assert maps.shape == (3, 16, 16)

    dense = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(ModelLoadError, match="no convolutional layer with a spatial output"):
        find_target(dense)


def test_the_logit_is_differentiated_and_the_model_is_left_as_it_was(region_cnn):
    model, x, _, _ = region_cnn
    explainer = Explainer(model)
    classes = np.array([0, 1] * 5)
    logits = np.stack([explainer.logits(x[:10], np.zeros(10, int)), explainer.logits(x[:10], np.ones(10, int))], 1)
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(softmax, model.predict(x[:10], verbose=0), rtol=1e-4, atol=1e-5)
    assert model.layers[-1].activation.__name__ == "softmax"  # not edited
    assert "before its softmax" in explainer.logit and explainer.target.name == "last_conv"
    assert explainer.gradcam(x[:10], classes).shape == (10, 16, 16)


def test_gradcam_mass_concentrates_on_the_deciding_region(region_cnn):
    model, x, y, _ = region_cnn
    explainer = Explainer(model)
    bright = np.flatnonzero(y == 1)[:10]
    maps = explainer.gradcam(x[bright], np.ones(len(bright), int))
    patches = patch_units(SHAPE)
    shares = [cell_shares(m, patches) for m in maps]
    top = [max(s, key=s.get) for s in shares]
    print("r1c2 shares:", [round(s["r1c2"], 2) for s in shares])
    assert top.count("r1c2") >= 8
    assert np.mean([s["r1c2"] for s in shares]) > 0.2  # 16 cells: a uniform map gives each 1/16


def test_integrated_gradients_complete_within_five_percent(region_cnn):
    model, x, y, mean = region_cnn
    explainer = Explainer(model)
    gaps = []
    for i in range(6):
        attributions, gap = explainer.integrated_gradients(x[i], int(y[i]), mean)
        assert attributions.shape == SHAPE
        gaps.append(gap)
    print("completeness gaps:", np.round(gaps, 4))
    assert max(gaps) < 0.05


def test_cell_shares_sum_to_one_and_spread_a_pixel_over_its_channels():
    patches = patch_units((4, 4, 3), (2, 2))
    heat = np.zeros((4, 4))
    heat[0, 3] = 2.0
    heat[3, 0] = 6.0
    heat[1, 1] = -5.0  # negative mass is not counted
    shares = cell_shares(heat, patches)
    assert shares == pytest.approx({"r0c0": 0.0, "r0c1": 0.25, "r1c0": 0.75, "r1c1": 0.0})
    assert cell_shares(np.zeros((4, 4)), patches) == {name: 0.0 for name in patches}
