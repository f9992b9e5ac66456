"""model_from_json / model_from_yaml / load_model(compile=False) and the modules they build."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import assert_close_rel
from torch import nn

import torchkeras_io as tkio

tf_keras = pytest.importorskip("tf_keras")


def _cnn():
    L = tf_keras.layers
    inp = L.Input((9, 9, 3), name="img")
    x = L.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="c1")(inp)
    x = L.BatchNormalization(name="bn")(x)
    x = L.MaxPooling2D(2, padding="same", name="pool")(x)
    x = L.Flatten(name="flat")(x)
    out = L.Dense(3, activation="softmax", name="head")(x)
    model = tf_keras.Model(inp, out, name="cnn")
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    bn = model.get_layer("bn")
    bn.set_weights([w if i < 3 else np.abs(w) + 0.5 for i, w in enumerate(bn.get_weights())])
    return model


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory):
    model = _cnn()
    path = tmp_path_factory.mktemp("m") / "cnn.h5"
    model.save(path)
    x = np.random.default_rng(1).normal(size=(4, 9, 9, 3)).astype("float32")
    return path, model.to_json(), x, model.predict(x, verbose=0)


def test_load_model_matches_keras(cnn_file):
    path, _, x, ref = cnn_file
    model = tkio.load_model(path, compile=False)
    assert isinstance(model, tkio.Model) and isinstance(model.module, nn.Module)
    # built from the file's Keras config, so the Keras names of its layers are known
    assert {"c1", "bn", "head"} <= set(model.keras_layer_names.values())
    assert_close_rel(model.predict(x), ref, 1e-5)
    assert not model.training  # loaded for inference, as Keras's predict runs


def test_model_from_json_then_load_weights(cnn_file):
    path, config, x, ref = cnn_file
    model = tkio.model_from_json(config)
    report = model.load_weights(path)
    assert report.all_loaded and report.loaded == ["c1", "bn", "head"]
    model.eval()
    assert_close_rel(model.predict(x), ref, 1e-5)


def test_model_from_yaml(cnn_file):
    path, config, x, ref = cnn_file
    model = tkio.model_from_yaml(yaml.safe_dump(json.loads(config)))
    model.load_weights(path)
    model.eval()
    assert_close_rel(model.predict(x), ref, 1e-5)


def test_built_modules_are_ordinary_torch(cnn_file, tmp_path):
    path, _, x, ref = cnn_file
    model = tkio.load_model(path, compile=False)
    graph = model.module
    assert isinstance(graph.layers["c1"], nn.Sequential) and isinstance(graph.layers["c1"][0], nn.Conv2d)
    assert isinstance(graph.layers["bn"], nn.BatchNorm2d) and isinstance(graph.layers["head"][0], nn.Linear)
    assert all(p.requires_grad for p in model.parameters())
    xt = torch.from_numpy(x)
    traced = torch.jit.trace(model.module, (xt,))
    assert_close_rel(traced(xt), ref, 1e-5)
    double = tkio.load_model(path, compile=False).double()
    assert_close_rel(double(xt.double()), ref, 1e-5)
    # the state dict is plain torch, and it round-trips through our own weights files
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tkio.save_weights(model.module, tmp_path / "w.h5", layer_names=model.keras_layer_names)
    again = tkio.model_from_json(_cnn().to_json())
    again.load_weights(tmp_path / "w.h5")
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())


def test_fine_tuning_works(cnn_file):
    path, _, x, _ = cnn_file
    model = tkio.load_model(path, compile=False)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = model.module.layers["head"][0].weight.detach().clone()
    loss = model(torch.from_numpy(x)).log().mean()
    loss.backward()
    opt.step()
    assert not torch.equal(before, model.module.layers["head"][0].weight)


def test_weights_only_file_is_named(tmp_path):
    tkio.save_weights(nn.Linear(2, 2), tmp_path / "w.h5")
    with pytest.raises(tkio.FileFormatError, match="weights-only"):
        tkio.load_model(tmp_path / "w.h5")


LAMBDA_CONFIG = {
    "class_name": "Sequential",
    "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 4]}},
        {"class_name": "Lambda", "config": {"name": "scale", "function": ["4wEAAAAAAAAA", None, None],
                                            "function_type": "lambda"}},
        {"class_name": "FancyLayer", "config": {"name": "fancy"}},
        {"class_name": "Dense", "config": {"name": "d", "units": 2}},
    ]},
}  # fmt: skip


def test_unsupported_layers_listed_at_once_and_lambda_never_run():
    with pytest.raises(tkio.UnsupportedLayerError) as err:
        tkio.model_from_json(json.dumps(LAMBDA_CONFIG))
    msg = str(err.value)
    assert "2 layers" in msg and "Lambda 'scale'" in msg and "FancyLayer 'fancy'" in msg
    assert "custom_objects" in msg and "never run" in msg
    with pytest.raises(tkio.UnsupportedLayerError, match="never run"):
        tkio.model_from_json(
            json.dumps(LAMBDA_CONFIG), safe_mode=False, custom_objects={"FancyLayer": lambda c: nn.Identity()}
        )


def test_custom_objects_stand_in_for_layers():
    class Scale(nn.Module):
        def forward(self, x):
            return 2 * x

    seen = []

    def fancy(config):
        seen.append(config["name"])
        return nn.Identity()

    model = tkio.model_from_json(
        json.dumps(LAMBDA_CONFIG), custom_objects={"scale": lambda c: Scale(), "FancyLayer": fancy}
    )
    assert seen == ["fancy"]
    x = torch.randn(3, 4)
    dense = model.module.layers["d"]
    assert torch.allclose(model(x), dense(2 * x))


def test_multi_input_multi_output_and_shared_layer(tmp_path):
    L = tf_keras.layers
    a, b = L.Input((5,), name="a"), L.Input((5,), name="b")
    shared = L.Dense(4, activation="tanh", name="shared")
    ha, hb = shared(a), shared(b)
    s = L.Add(name="add")([ha, hb])
    out1 = L.Dense(2, name="o1")(s)
    out2 = L.Concatenate(name="cat")([ha, hb])
    model = tf_keras.Model([a, b], [out1, out2])
    path = tmp_path / "m.h5"
    model.save(path)
    xa, xb = np.random.default_rng(0).normal(size=(2, 3, 5)).astype("float32")
    r1, r2 = model.predict([xa, xb], verbose=0)
    ours = tkio.load_model(path, compile=False)
    y1, y2 = ours.predict([xa, xb])
    assert_close_rel(y1, r1, 1e-5)
    assert_close_rel(y2, r2, 1e-5)
    assert len([m for m in ours.modules() if isinstance(m, nn.Linear)]) == 2  # the shared layer is one module


def test_nested_model_called_twice(tmp_path):
    L = tf_keras.layers
    inner = tf_keras.Sequential([L.Input((6,)), L.Dense(5, name="d1"), L.BatchNormalization(name="bn"),
                                 L.Dense(3, name="d2")], name="inner")  # fmt: skip
    inner.layers[1].trainable = False  # frozen: its weights move to the non-trainable part of the group
    a, b = L.Input((6,), name="a"), L.Input((6,), name="b")
    out = L.Subtract(name="sub")([inner(a), inner(b)])
    model = tf_keras.Model([a, b], out)
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=w.shape).astype("float32") + (1.5 if i == 5 else 0) for i, w in
                       enumerate(model.get_weights())])  # fmt: skip
    path = tmp_path / "m.h5"
    model.save(path)
    xa, xb = rng.normal(size=(2, 4, 6)).astype("float32")
    ours = tkio.load_model(path, compile=False)
    assert_close_rel(ours.predict([xa, xb]), model.predict([xa, xb], verbose=0), 1e-5)
    assert not any(p.requires_grad for p in ours.module.layers["inner"].layers["bn"].parameters())


@pytest.mark.slow
def test_torch_compile(cnn_file):
    path, _, x, ref = cnn_file
    model = tkio.load_model(path, compile=False).module
    compiled = torch.compile(model)
    with torch.no_grad():
        assert_close_rel(compiled(torch.from_numpy(x)), ref, 1e-5)


def test_to_json_of_a_loaded_model_gives_back_its_config(cnn_file):
    path, config, x, ref = cnn_file
    model = tkio.load_model(path, compile=False)
    again = tkio.model_from_json(tkio.to_json(model))
    again.load_weights(path)
    again.eval()
    assert_close_rel(again.predict(x), ref, 1e-5)
    rebuilt = tf_keras.models.model_from_json(tkio.to_json(model))
    assert [layer.name for layer in rebuilt.layers] == [
        layer["name"] for layer in json.loads(config)["config"]["layers"]
    ]


def test_compiled_tf_keras_losses_and_metrics_as_keras_stores_them(tmp_path):
    """tf.keras writes per-output metric lists of serialized metrics and loss objects; fit/evaluate go on."""
    inp = tf_keras.Input((6,))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3)(inp))
    model.compile("sgd", loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy", tf_keras.metrics.SparseTopKCategoricalAccuracy(k=2)])  # fmt: skip
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 6)).astype("float32"), rng.integers(0, 3, 16)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "m.h5")
    ours = tkio.load_model(tmp_path / "m.h5")
    assert ours.loss.from_logits and ours.loss.name == "sparse_categorical_crossentropy"
    assert ours.metrics[0] in ("accuracy", "sparse_categorical_accuracy")
    expected = model.evaluate(x, y, verbose=0)
    got = ours.evaluate(x, y, verbose=0)
    assert_close_rel(np.asarray(got[:2]), np.asarray(expected[:2]), 1e-5)
    ours.fit(x, y, epochs=1, verbose=0)
    ours.save(tmp_path / "again.h5")  # the loss object is written back as Keras serializes it
    again = tf_keras.models.load_model(tmp_path / "again.h5")
    assert again.loss.get_config()["from_logits"] is True
