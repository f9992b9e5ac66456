"""Configs as real Keras versions wrote them load and match Keras; converted models run where they were moved."""

from __future__ import annotations

import json
import math
import warnings

import h5py
import numpy as np
import pytest
import torch
from conftest import ORACLE_WARNINGS, as_list, assert_close_rel, keras_module, randomize_keras_weights
from test_corpus_models import EXPECTED_UNSUPPORTED, NOT_A_GRAPH, _cases, _load, _manifest, _refs

import torchkeras_io as tkio

pytestmark = [*ORACLE_WARNINGS]
RTOL = 1e-5


def _tf():
    return pytest.importorskip("tensorflow")


# ------------------------------------------------------------------------- numbers as numpy values
def _ndarray(value):
    """How Keras 2.1-2.2 / tf.keras 1.x wrote a numpy array (``K.cast_to_floatx`` makes 0-d ones)."""
    return {"type": "ndarray", "value": float(np.float32(value)) if value is not None else math.nan}


def _as_tf21(config: dict) -> dict:
    """The config with the numbers tf.keras 2.1-era layers kept as float32 arrays encoded that way."""
    numeric = {"ReLU": ("max_value", "negative_slope", "threshold"), "LeakyReLU": ("alpha",), "ELU": ("alpha",),
               "Dropout": ("rate",), "ThresholdedReLU": ("theta",)}  # fmt: skip
    for layer in config["config"]["layers"]:
        for key in numeric.get(layer["class_name"], ()):
            layer["config"][key] = _ndarray(layer["config"].get(key))
    return config


def test_tf21_numpy_encoded_numbers(tmp_path):
    """ReLU max_value as ``{"type": "ndarray", "value": NaN}`` (no maximum) and friends load as numbers."""
    K = keras_module("tf_keras")
    L = K.layers
    inp = K.Input((6,), name="x")
    h = L.ReLU(negative_slope=0.1, threshold=0.2, name="re_lu")(L.Dense(8, name="d1")(inp))  # max_value None
    h = L.ReLU(max_value=0.6, negative_slope=0.05, threshold=0.1, name="re_lu_6")(L.Dense(8, name="d2")(h))
    h = L.LeakyReLU(alpha=0.25, name="leaky")(L.Dropout(0.3, name="drop")(L.Dense(8, name="d3")(h)))
    h = L.ThresholdedReLU(theta=0.15, name="thr")(h)
    out = L.ELU(alpha=0.7, name="elu")(L.Dense(3, name="d4")(h))
    model = K.Model(inp, out)
    randomize_keras_weights(model, np.random.default_rng(3))
    x = np.random.default_rng(4).normal(0, 1.5, (16, 6)).astype(np.float32)
    ref = model.predict(x, verbose=0)
    path = tmp_path / "tf21.h5"
    model.save(path)
    with h5py.File(path, "r+") as f:
        config = _as_tf21(json.loads(f.attrs["model_config"]))
        f.attrs["model_config"] = json.dumps(config).encode("utf-8")  # NaN stays NaN, as Python's json wrote it
        f.attrs["keras_version"] = b"2.1.6-tf"
    text = json.dumps(config)
    assert '"max_value": {"type": "ndarray", "value": NaN}' in text and '"rate": {"type": "ndarray"' in text
    assert_close_rel(tkio.load_model(path, compile=False).predict(x), ref, RTOL)


def test_keras3_numpy_call_arguments(tmp_path):
    """Keras 3 writes an array argument of a ``keras.ops`` call as ``{"class_name": "__numpy__", ...}``."""
    K = keras_module("keras3")
    inp = K.Input((5,))
    h = K.layers.Dense(4, name="d")(inp)
    bounds = np.array([0.1, -0.2, 0.0, 0.3], dtype=np.float32)
    flags = K.ops.cast(K.ops.greater(h, bounds), "float32")
    model = K.Model(inp, [h, flags])
    randomize_keras_weights(model, np.random.default_rng(0))
    assert '"__numpy__"' in model.to_json()
    x = np.random.default_rng(1).normal(size=(9, 5)).astype(np.float32)
    ref = as_list(model.predict(x, verbose=0))
    model.save(tmp_path / "ops.keras")
    got = tkio.load_model(tmp_path / "ops.keras", compile=False).predict(x)
    assert_close_rel(got[0], ref[0], RTOL)
    np.testing.assert_array_equal(got[1], ref[1])
    assert 0 < ref[1].mean() < 1, "the comparison must see both outcomes"


@pytest.mark.parametrize("flavor", ["keras3", "tf_keras"])
def test_per_channel_rescaling(flavor, tmp_path):
    """Rescaling by arrays (ImageNet mean/std): Keras 3 writes ``__numpy__`` objects, tf-keras lists."""
    K = keras_module(flavor)
    inp = K.Input((5, 5, 3))
    scale = np.array([1 / 0.229, 1 / 0.224, 1 / 0.225], dtype=np.float32)
    offset = np.array([-0.485, -0.456, -0.406], dtype=np.float32) * scale
    x = K.layers.Rescaling(scale=scale, offset=offset, name="normalize")(inp)
    model = K.Model(inp, K.layers.Conv2D(4, 3, name="conv")(x))
    randomize_keras_weights(model, np.random.default_rng(2))
    if flavor == "keras3":
        assert '"__numpy__"' in model.to_json()
    feed = np.random.default_rng(3).uniform(0, 1, (4, 5, 5, 3)).astype(np.float32)
    ref = model.predict(feed, verbose=0)
    for ext in ("keras", "h5") if flavor == "keras3" else ("h5",):
        model.save(tmp_path / f"rescale.{ext}")
        got = tkio.load_model(tmp_path / f"rescale.{ext}", compile=False)
        assert_close_rel(got.predict(feed), ref, RTOL)
        assert_close_rel(got.double().predict(feed), ref, RTOL)  # the constants are buffers: they follow


# ------------------------------------------------------------------------- nested models' nodes
def _autoencoder(K, name: str = "ae"):
    """encoder and decoder each built on their own Input, then called on the outer graph."""
    L = K.layers
    e_in = K.Input((6,), name="enc_in")
    encoder = K.Model(e_in, L.Dense(3, activation="tanh", name="z")(e_in), name="encoder")
    d_in = K.Input((3,), name="dec_in")
    decoder = K.Model(d_in, L.Dense(6, name="recon")(L.Dense(4, activation="relu", name="h")(d_in)), name="decoder")
    return encoder, decoder


def _ae_single(K):
    encoder, decoder = _autoencoder(K)
    x = K.Input((6,), name="x")
    return K.Model(x, decoder(encoder(x)), name="ae"), 1


def _ae_shared(K):
    """Both nested models called twice, an output taken from each call, a nested Sequential too."""
    encoder, decoder = _autoencoder(K)
    head = K.Sequential([K.Input((6,)), K.layers.Dense(2, name="hd")], name="head")
    a, b = K.Input((6,), name="a"), K.Input((6,), name="b")
    za, zb = encoder(a), encoder(b)
    ra, rb = decoder(za), decoder(zb)
    return K.Model([a, b], [rb, za, head(ra), head(rb)], name="siamese_ae"), 2


def _ae_reused(K):
    """The nested models were called in another model first: those calls are not the saved model's nodes."""
    encoder, decoder = _autoencoder(K)
    other = K.Input((6,), name="other")
    K.Model(other, decoder(encoder(other)), name="first_use")
    x = K.Input((6,), name="x")
    z = encoder(x)
    return K.Model(x, [decoder(z), z], name="second_use"), 1


def _ae_unbuilt_sequential(K):
    """A nested Sequential without an input shape: built by its first call, it has no node of its own."""
    encoder, _ = _autoencoder(K)
    head = K.Sequential([K.layers.Dense(2, name="hd")], name="head")
    a, b = K.Input((6,), name="a"), K.Input((6,), name="b")
    return K.Model([a, b], [head(encoder(a)), head(encoder(b))], name="unbuilt"), 2


@pytest.mark.parametrize("flavor", ["keras3", "tf_keras"])
@pytest.mark.parametrize(
    "make", [_ae_single, _ae_shared, _ae_reused, _ae_unbuilt_sequential], ids=lambda f: f.__name__[1:]
)
def test_nested_models_called_on_outer_graph(flavor, make, tmp_path):
    K = keras_module(flavor)
    model, n_inputs = make(K)
    randomize_keras_weights(model, np.random.default_rng(5))
    rng = np.random.default_rng(6)
    xs = [rng.normal(size=(7, 6)).astype(np.float32) for _ in range(n_inputs)]
    feed = xs if n_inputs > 1 else xs[0]
    ref = as_list(model.predict(feed, verbose=0))
    for ext in ("keras", "h5"):
        path = tmp_path / f"{make.__name__}.{ext}"
        model.save(path)
        got = as_list(tkio.load_model(path, compile=False).predict(feed))
        assert len(got) == len(ref)
        for g, r in zip(got, ref):
            assert_close_rel(g, r, RTOL)


def test_keras3_output_refs_count_nested_functional_calls_from_one(tmp_path):
    """What makes the case above hard: the file says node 1 for the nested model's only call."""
    K = keras_module("keras3")
    model, _ = _ae_single(K)
    config = json.loads(model.to_json())["config"]
    assert config["output_layers"] in ([["decoder", 1, 0]], ["decoder", 1, 0])
    decoder_call = next(layer for layer in config["layers"] if layer["name"] == "decoder")["inbound_nodes"][0]
    assert decoder_call["args"][0]["config"]["keras_history"] == ["encoder", 0, 0]


# ------------------------------------------------------------------------- devices and dtypes
def _tfop_autoencoder(K):
    """An autoencoder of tf.nn / tf.math calls with constant weights: a converted model of buffers only."""
    tf = _tf()
    rng = np.random.default_rng(7)

    def w(*shape):
        return rng.normal(0, 0.3, shape).astype(np.float32)

    x = K.Input((8, 8, 2), name="img")
    h = tf.nn.conv2d(x, w(3, 3, 2, 4), strides=2, padding="SAME")
    h = tf.nn.relu(tf.nn.bias_add(h, w(4)))
    z = tf.math.tanh(tf.linalg.matmul(tf.reshape(h, [-1, 64]), w(64, 8)))
    h = tf.reshape(tf.nn.relu(tf.linalg.matmul(z, w(8, 128))), [-1, 8, 8, 2])
    out = tf.math.sigmoid(tf.math.add(tf.nn.conv2d(h, w(3, 3, 2, 2), strides=1, padding="SAME"), w(2)))
    return K.Model(x, out, name="tfop_ae")


@pytest.fixture(scope="module")
def tfop_file(tmp_path_factory):
    K = keras_module("tf_keras")
    model = _tfop_autoencoder(K)
    x = np.random.default_rng(8).normal(size=(3, 8, 8, 2)).astype(np.float32)
    ref = model.predict(x, verbose=0)
    path = tmp_path_factory.mktemp("tfop") / "tfop_ae.h5"
    model.save(path)
    return path, x, ref


def test_tfop_model_holds_buffers_only(tfop_file):
    path, x, ref = tfop_file
    model = tkio.load_model(path, compile=False)
    assert not list(model.parameters()) and list(model.buffers()), "the case needs a model of buffers only"
    assert_close_rel(model.predict(x), ref, RTOL)


def test_tfop_model_in_float64(tfop_file):
    path, x, ref = tfop_file
    model = tkio.load_model(path, compile=False).double()
    out = model.predict(x)
    assert out.dtype == np.float64, "inputs must follow the buffers' dtype"
    assert_close_rel(out, ref, RTOL)


def test_tfop_model_on_meta(tfop_file):
    path, x, ref = tfop_file
    model = tkio.load_model(path, compile=False).to("meta")
    out = model.predict(x)
    assert isinstance(out, torch.Tensor) and out.device.type == "meta" and tuple(out.shape) == ref.shape


@pytest.mark.slow
def test_tfop_model_compiles(tfop_file):
    """torch.compile sees the constants as buffers: cast after loading, the compiled graph computes in float64."""
    path, x, ref = tfop_file
    module = tkio.load_model(path, compile=False).module.double()
    with torch.no_grad():
        out = torch.compile(module, backend="aot_eager")(torch.as_tensor(x, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert_close_rel(out, ref, RTOL)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tfop_model_loaded_on_cuda(tfop_file):
    path, x, ref = tfop_file
    model = tkio.load_model(path, compile=False, device="cuda")
    assert all(b.device.type == "cuda" for b in model.buffers())
    assert_close_rel(model.predict(x), ref, RTOL)


def test_module_device_and_dtype_look_at_buffers():
    """A module with buffers and no parameters: predict feeds its inputs to the buffers' device and dtype."""
    buffers_only = torch.nn.BatchNorm1d(3, affine=False).double().to("meta")
    out = tkio.Model(buffers_only).predict(np.zeros((2, 3), dtype=np.float32))
    assert out.device.type == "meta" and out.dtype == torch.float64 and out.shape == (2, 3)


# -- every corpus model that loads
_LOADABLE = [n for n in _cases() if n not in EXPECTED_UNSUPPORTED and n not in NOT_A_GRAPH]


def _corpus_inputs(model: tkio.Model, name: str) -> list:
    for _, xs, _ in _refs(name):
        return xs
    graph = model.module  # no reference: inputs of the declared shapes (None: 8), zeros are valid ids
    return [
        np.zeros((2, *(8 if s is None else s for s in shape[1:])), dtype=np.float32) for shape in graph.input_shapes
    ]


def _stray_tensors(module: torch.nn.Module) -> list:
    """Tensors a module keeps outside its parameters and buffers (``.to()``, ``.half()`` miss them).

    References to its own parameters (``nn.LSTM._flat_weights``, which torch refreshes) are not strays."""
    out = []
    own = {id(t) for t in [*module.parameters(), *module.buffers()]}

    def walk(value, where):
        if isinstance(value, torch.Tensor):
            if id(value) not in own:
                out.append(where)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}[{k!r}]")

    for path, sub in module.named_modules():
        for attr, value in vars(sub).items():
            if attr not in ("_parameters", "_buffers", "_modules"):
                walk(value, f"{path}.{attr}")
    return out


@pytest.mark.parametrize("name", _LOADABLE, ids=lambda n: n[:70])
def test_corpus_model_runs_where_it_is(name):
    """On meta: meta outputs of the reference's shapes; in float64: float64 outputs matching the references."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tkio.TorchKerasIOWarning)
        model = _load(name)
    assert _stray_tensors(model) == []
    xs = _corpus_inputs(model, name)
    feed = xs if len(xs) > 1 else xs[0]
    refs = list(_refs(name))
    row = _manifest()[name]
    recurrent = any(k in row["layer_kinds"] for k in ("LSTM", "GRU", "SimpleRNN", "RNN"))
    if refs:  # one sample of the references' two: the largest model (512x512 images) is slow in float64
        out = as_list(model.double().predict([x[:1] for x in xs] if len(xs) > 1 else xs[0][:1]))
        for o, y in zip(out, refs[0][2]):
            assert o.dtype == np.float64
            assert_close_rel(o, y[:1], 1e-4 if recurrent else RTOL)  # the corpus test's tolerances
    out = as_list(model.to("meta").predict(feed))
    assert all(isinstance(o, torch.Tensor) and o.device.type == "meta" for o in out)
    for o, y in zip(out, refs[0][2] if refs else []):
        assert tuple(o.shape) == y.shape
