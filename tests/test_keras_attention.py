"""Keras config -> torch graph oracles for attention, op layers and image preprocessing.

MultiHeadAttention (nn.MultiheadAttention where it is exact, EinsumMultiHeadAttention otherwise),
Attention / AdditiveAttention, Keras 3 op nodes (NotEqual, Any, …), tf.keras TFOpLambda /
SlicingOpLambda, Resizing, CenterCrop, Normalization, Rescaling. Each case builds a small Keras
model (tf_keras, and Keras 3 on the torch backend) with random weights, saves it as a full-model
HDF5 file, and compares ``tkio.load_model(path).predict(x)`` with Keras's ``predict`` on the same
random input: ``max|a-b| <= 1e-5 * max|ref|`` (1e-4 with recurrent layers). Fixtures are made in
the run.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Callable

import numpy as np
import pytest
from conftest import (
    BOTH,
    K3,
    ORACLE_WARNINGS,
    TFK,
    as_list,
    assert_close_rel,
    keras_module,
    keras_then_ours,
    randomize_keras_weights,
)

import torchkeras_io as tkio

RTOL = 1e-5
RTOL_RNN = 1e-4
BATCH = 3

pytestmark = [*ORACLE_WARNINGS, pytest.mark.filterwarnings("ignore::UserWarning")]


@dataclasses.dataclass
class Case:
    id: str
    inputs: list  # per input: (shape, kind); kind None (float), ("int", vocab) with padding zeros, ("bool", p)
    build: Callable  # (K, [input tensors]) -> output tensor(s)
    flavors: tuple = BOTH
    rtol: float = RTOL
    json: bool = False  # also model_from_json + load_weights
    marks: tuple = ()


CASES: list = []


def case(id, inputs, build, flavors=BOTH, rtol=RTOL, json=False, marks=()):
    CASES.append(Case(id, list(inputs), build, flavors, rtol, json, marks))


def F(shape):  # a float input
    return (tuple(shape), None)


def Ids(shape, vocab=9):  # int ids with padding zeros (for Embedding(mask_zero=True))
    return (tuple(shape), ("int", vocab))


def B(shape, p=0.7):  # a boolean mask input
    return (tuple(shape), ("bool", p))


def mha(*args, call=None, **kwargs):
    """MultiHeadAttention(*args, **kwargs) called as mha(*inputs, **call)."""
    return lambda K, xs: K.layers.MultiHeadAttention(*args, **kwargs)(*xs, **(call or {}))


def emb(K, x, dim=8):
    return K.layers.Embedding(9, dim, mask_zero=True)(x)


# ------------------------------------------------------------------------------------ MultiHeadAttention
# nn.MultiheadAttention path: key_dim == value_dim == E / H, output E, biases
case("mha-self", [F((6, 8))], lambda K, xs: K.layers.MultiHeadAttention(2, 4)(xs[0], xs[0]), json=True)
case("mha-cross-kv-dims", [F((6, 8)), F((5, 3))], mha(2, 4))
case("mha-cross-key", [F((6, 8)), F((5, 3)), F((5, 7))], mha(4, 2))
case("mha-causal", [F((6, 8))], lambda K, xs: K.layers.MultiHeadAttention(2, 4)(xs[0], xs[0], use_causal_mask=True))
case("mha-causal-cross", [F((6, 8)), F((4, 8))], mha(2, 4, call=dict(use_causal_mask=True)))
case("mha-attention-mask", [F((6, 8)), F((5, 8)), B((6, 5), 0.6)],
     lambda K, xs: K.layers.MultiHeadAttention(2, 4)(xs[0], xs[1], attention_mask=xs[2]))  # fmt: skip
case("mha-attention-mask-causal", [F((5, 8)), B((5, 5), 0.6)],
     lambda K, xs: K.layers.MultiHeadAttention(2, 4)(xs[0], xs[0], attention_mask=xs[1], use_causal_mask=True))  # fmt: skip
case("mha-scores", [F((6, 8)), F((5, 8))],
     lambda K, xs: list(K.layers.MultiHeadAttention(2, 4)(xs[0], xs[1], return_attention_scores=True)))  # fmt: skip
case("mha-scores-mask", [F((6, 8)), F((5, 8)), B((6, 5), 0.5)],
     lambda K, xs: list(K.layers.MultiHeadAttention(2, 4)(xs[0], xs[1], attention_mask=xs[2],
                                                          return_attention_scores=True)))  # fmt: skip
case("mha-dropout-mask", [F((6, 8)), F((5, 8)), B((6, 5), 0.5)],
     lambda K, xs: K.layers.MultiHeadAttention(2, 4, dropout=0.2)(xs[0], xs[1], attention_mask=xs[2]))  # fmt: skip


def _embedded_self_attention(dropout=0.0):
    def build(K, xs):
        e = emb(K, xs[0])
        y = K.layers.MultiHeadAttention(2, 4, dropout=dropout)(e, e)
        return K.layers.Dense(3)(y)

    return build


case("mha-embedding-mask", [Ids((7,))], _embedded_self_attention())
case("mha-embedding-mask-dropout", [Ids((7,))], _embedded_self_attention(0.1))
case("mha-embedding-mask-keydim", [Ids((7,))], lambda K, xs: K.layers.MultiHeadAttention(2, 3)(*[emb(K, xs[0])] * 2))
case("mha-embedding-mask-keydim-dropout", [Ids((7,))],
     lambda K, xs: K.layers.MultiHeadAttention(2, 3, dropout=0.1)(*[emb(K, xs[0])] * 2))  # fmt: skip
case("mha-robust-masking", [Ids((7,))],
     lambda K, xs: K.layers.MultiHeadAttention(2, 4, softmax_robust_masking=True)(*[emb(K, xs[0])] * 2),
     flavors=TFK)  # fmt: skip


def _masked_cross(K, xs):
    q, v = emb(K, xs[0]), emb(K, xs[1])
    return K.layers.MultiHeadAttention(2, 4)(q, v)


case("mha-masked-cross", [Ids((6,)), Ids((5,))], _masked_cross)

# EinsumMultiHeadAttention path
case("mha-keydim", [F((6, 8))], lambda K, xs: K.layers.MultiHeadAttention(2, 3)(xs[0], xs[0]), json=True)
case("mha-valuedim", [F((6, 8)), F((5, 3))], mha(3, 4, value_dim=6))
case("mha-output-shape", [F((6, 8)), F((5, 8))], mha(2, 4, output_shape=5))
case("mha-output-shape-2d", [F((6, 8)), F((5, 8))], mha(2, 4, output_shape=(2, 3)))
case("mha-no-bias", [F((6, 8)), F((5, 8))], mha(2, 4, use_bias=False))
case("mha-no-bias-causal", [F((6, 8))],
     lambda K, xs: K.layers.MultiHeadAttention(2, 5, use_bias=False)(xs[0], xs[0], use_causal_mask=True))  # fmt: skip
case("mha-keydim-key-mask", [F((6, 8)), F((5, 3)), F((5, 7)), B((6, 5), 0.6)],
     lambda K, xs: K.layers.MultiHeadAttention(3, 5, value_dim=2)(xs[0], xs[1], xs[2], attention_mask=xs[3]))  # fmt: skip
case("mha-keydim-scores", [F((6, 8)), F((5, 8))],
     lambda K, xs: list(K.layers.MultiHeadAttention(2, 3)(xs[0], xs[1], return_attention_scores=True)))  # fmt: skip
case("mha-rank4-default-axes", [F((3, 4, 8))], lambda K, xs: K.layers.MultiHeadAttention(2, 3)(xs[0], xs[0]))
case("mha-rank4-axis2", [F((3, 4, 8)), F((3, 5, 6))], mha(2, 3, attention_axes=(2,)))
case("mha-rank4-axis1", [F((3, 4, 8))], lambda K, xs: K.layers.MultiHeadAttention(2, 4, attention_axes=1)(xs[0], xs[0]))
case("mha-gate", [F((6, 8)), F((5, 8))], mha(2, 4, use_gate=True), flavors=K3)
case("mha-sliding-window", [F((7, 8))],
     lambda K, xs: K.layers.MultiHeadAttention(2, 4, sliding_window=3)(xs[0], xs[0], use_causal_mask=True),
     flavors=K3)  # fmt: skip


def _transformer_block(K, xs):
    x = xs[0]
    a = K.layers.MultiHeadAttention(4, 2, dropout=0.1)(x, x)
    x = K.layers.LayerNormalization(epsilon=1e-6)(K.layers.Add()([x, K.layers.Dropout(0.1)(a)]))
    f = K.layers.Dense(8)(K.layers.Dense(16, activation="relu")(x))
    x = K.layers.LayerNormalization(epsilon=1e-6)(K.layers.Add()([x, f]))
    return K.layers.Dense(2)(K.layers.Flatten()(x))


case("transformer-block", [F((6, 8))], _transformer_block, json=True)


# ------------------------------------------------------------------------------------ Attention / AdditiveAttention
def att(cls, n_inputs=2, embed=False, call=None, **kwargs):
    def build(K, xs):
        parts = [emb(K, x) for x in xs] if embed else list(xs)
        out = getattr(K.layers, cls)(**kwargs)(parts[:n_inputs], **(call or {}))
        return list(out) if isinstance(out, (list, tuple)) else out

    return build


for _cls in ("Attention", "AdditiveAttention"):
    _n = _cls.lower()
    case(f"{_n}", [F((6, 8)), F((5, 8))], att(_cls))
    case(f"{_n}-qvk", [F((6, 8)), F((5, 8)), F((5, 8))], att(_cls, 3))
    case(f"{_n}-masks", [Ids((6,)), Ids((5,))], att(_cls, embed=True))
    case(f"{_n}-causal", [F((5, 8)), F((5, 8))], att(_cls, call=dict(use_causal_mask=True)))
    case(f"{_n}-causal-masks", [Ids((5,)), Ids((5,))], att(_cls, embed=True, call=dict(use_causal_mask=True)))
    case(f"{_n}-scores", [F((6, 8)), F((5, 8))], att(_cls, call=dict(return_attention_scores=True)))
case("attention-scale", [F((6, 8)), F((5, 8))], att("Attention", use_scale=True))
case("attention-concat", [F((6, 8)), F((5, 8))], att("Attention", score_mode="concat"))
case("attention-concat-scale-masks", [Ids((6,)), Ids((5,))],
     att("Attention", embed=True, score_mode="concat", use_scale=True))  # fmt: skip
case("additiveattention-noscale", [F((6, 8)), F((5, 8))], att("AdditiveAttention", use_scale=False))
case("attention-masked-sequence", [Ids((6,))],
     lambda K, xs: K.layers.Dense(2)(K.layers.Attention()([emb(K, xs[0]), emb(K, xs[0])])), json=True)  # fmt: skip


# ------------------------------------------------------------------------------------ Keras 3 op nodes
def _notequal_any_lstm(K, xs):
    mask = K.ops.any(K.ops.not_equal(xs[0], 0.0), axis=-1)
    x = K.layers.Masking()(xs[0])
    x = K.layers.LSTM(5, return_sequences=True)(x, mask=mask)
    return K.layers.LSTM(3)(x, mask=mask)


def _notequal_any_dense(K, xs):
    mask = K.ops.any(K.ops.not_equal(xs[0], 0.0), axis=-1, keepdims=True)
    return K.layers.Dense(3)(K.layers.GlobalAveragePooling1D()(xs[0] * K.ops.cast(mask, "float32")))


def _k3_ops(K, xs):
    x = xs[0]
    pos = K.ops.logical_and(K.ops.greater(x, 0.1), K.ops.not_equal(x, 0.0))
    m = K.ops.cast(K.ops.all(pos, axis=1, keepdims=True), "float32")
    e = K.ops.squeeze(K.ops.expand_dims(K.ops.cast(K.ops.any(pos, axis=-1), "float32"), -1), axis=-1)
    return [K.layers.Dense(2)(m), e]


case("k3-notequal-any-lstm", [F((7, 4))], _notequal_any_lstm, flavors=K3, rtol=RTOL_RNN)
case("k3-masking-lstm", [F((7, 4))],
     lambda K, xs: K.layers.LSTM(3)(K.layers.Masking()(xs[0])), flavors=K3, rtol=RTOL_RNN)  # fmt: skip
case("k3-notequal-any-dense", [F((7, 4))], _notequal_any_dense, flavors=K3)
case("k3-ops", [F((5, 4))], _k3_ops, flavors=K3)


# ------------------------------------------------------------------------------------ tf.keras TFOpLambda
def _tf():
    return pytest.importorskip("tensorflow")


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(0, 0.3, shape).astype(np.float32)


def _tf_gelu_conv(K, xs):
    tf = _tf()
    x = tf.nn.convolution(xs[0], _rand(3, 3, 3, 4), strides=[1, 1], padding="SAME", dilations=[1, 1])
    x = tf.math.add(x, _rand(4, seed=1))
    x = 0.5 * x * (1.0 + tf.math.erf(x / 1.4142135))
    x = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    x = tf.compat.v1.nn.depthwise_conv2d(x, _rand(3, 3, 4, 2, seed=2), strides=[1, 2, 2, 1], padding="VALID")
    x = tf.nn.relu(tf.math.subtract(x, _rand(8, seed=3)))
    x = tf.nn.convolution(x, _rand(2, 2, 8, 3, seed=4), strides=2, padding="SAME")
    return tf.math.sigmoid(tf.math.divide(x, 2.0))


def _tf_shapes(K, xs):
    tf = _tf()
    x = xs[0]  # (6, 6, 4)
    t = tf.transpose(x, perm=[0, 3, 1, 2])
    r = tf.reshape(t, [-1, 4, 2, 18])
    c = tf.concat([x, tf.nn.relu(x)], axis=-1)
    s = x[:, 1:5, ::2, 0]
    e = tf.expand_dims(s, -1)
    m = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    y = 1.0 - x * 2.0
    return [r, c, e, m, y, tf.nn.softmax(x, axis=-1), tf.reduce_max(x, axis=1)]


def _tf_dense_ops(K, xs):
    tf = _tf()
    x = xs[0]  # (5, 6)
    h = tf.matmul(x, _rand(6, 4))
    h = tf.nn.bias_add(h, _rand(4, seed=1))
    h = tf.math.maximum(h, -0.2) + tf.math.square(h) * tf.math.tanh(h)
    h = tf.nn.gelu(h) + tf.clip_by_value(h, -0.5, 0.5) - tf.math.reduce_sum(h, axis=-1, keepdims=True)
    return tf.math.l2_normalize(h, axis=-1)


def _tf_pad_modes(K, xs):
    tf = _tf()
    x = xs[0]
    return [tf.pad(x, [[0, 0], [2, 1], [1, 2], [0, 0]], mode="REFLECT"),
            tf.pad(x, [[0, 0], [2, 1], [1, 0], [0, 0]], mode="SYMMETRIC"),
            tf.pad(x, [[0, 0], [1, 1], [0, 0], [0, 0]], constant_values=0.5)]  # fmt: skip


def _tf_resize(K, xs):
    tf = _tf()
    return [tf.image.resize(xs[0], (9, 7)), tf.image.resize(xs[0], (3, 4), method="nearest")]


case("tfop-gelu-conv", [F((9, 9, 3))], _tf_gelu_conv, flavors=TFK)
case("tfop-shapes", [F((6, 6, 4))], _tf_shapes, flavors=TFK)
case("tfop-dense", [F((5, 6))], _tf_dense_ops, flavors=TFK)
case("tfop-pad-modes", [F((5, 6, 2))], _tf_pad_modes, flavors=TFK)
case("tfop-resize", [F((5, 6, 2))], _tf_resize, flavors=TFK)


# ------------------------------------------------------------------------------------ preprocessing
def L(cls, *args, **kwargs):
    return lambda K, xs: getattr(K.layers, cls)(*args, **kwargs)(xs[0])


case("resizing-bilinear-up", [F((5, 6, 3))], L("Resizing", 9, 11))
case("resizing-bilinear-down", [F((9, 11, 3))], L("Resizing", 4, 5))
case("resizing-nearest-up", [F((5, 6, 3))], L("Resizing", 9, 13, interpolation="nearest"))
case("resizing-nearest-down", [F((9, 11, 3))], L("Resizing", 4, 3, interpolation="nearest"))
case("resizing-crop-aspect", [F((9, 6, 3))], L("Resizing", 4, 5, crop_to_aspect_ratio=True))
case("resizing-pad-aspect", [F((9, 6, 3))], L("Resizing", 4, 5, pad_to_aspect_ratio=True, fill_value=0.5),
     flavors=K3)  # fmt: skip
case("resizing-antialias", [F((9, 11, 3))], L("Resizing", 4, 5, antialias=True), flavors=K3)
case("resizing-then-conv", [F((5, 6, 3))],
     lambda K, xs: K.layers.Conv2D(2, 3)(K.layers.Resizing(8, 8)(xs[0])), json=True)  # fmt: skip
case("centercrop", [F((9, 8, 3))], L("CenterCrop", 4, 5))
case("centercrop-upsize", [F((5, 6, 3))], L("CenterCrop", 8, 7))
case("normalization", [F((5, 4))], L("Normalization"), json=True)
case("normalization-axes", [F((3, 4, 2))], L("Normalization", axis=(1, -1)))
case(
    "normalization-given", [F((5, 4))], L("Normalization", mean=[0.5, -1.0, 2.0, 0.0], variance=[4.0, 0.25, 1e-9, 1.0])
)
case("normalization-given-scalar", [F((5, 4))], L("Normalization", mean=0.5, variance=2.0))
case("normalization-invert", [F((5, 4))], L("Normalization", invert=True))
case("rescaling", [F((4, 4, 3))], L("Rescaling", 1 / 127.5, offset=-1.0))


# ------------------------------------------------------------------------------------ harness
def _inputs(c: Case, rng: np.random.Generator) -> list:
    out = []
    for shape, kind in c.inputs:
        full = (BATCH,) + shape
        if kind is None:
            out.append(rng.normal(size=full).astype(np.float32))
        elif kind[0] == "int":
            ids = rng.integers(1, kind[1], size=full)
            ids[:, -2:] = 0  # padding at the end, and a fully padded tail for one sample
            ids[0, shape[0] // 2 :] = 0
            out.append(ids.astype(np.int32))
        else:
            out.append(rng.random(full) < kind[1])
    if any(kind is None for _, kind in c.inputs):
        first = next(i for i, (_, kind) in enumerate(c.inputs) if kind is None)
        out[first][1, -1] = 0.0  # an all-zero step, for Masking
    return out


def _keras_model(K, c: Case):
    dtypes = {None: "float32", "int": "int32", "bool": "bool"}
    inputs = [K.Input(shape, dtype=dtypes[kind[0] if kind else None]) for shape, kind in c.inputs]
    return K.Model(inputs, c.build(K, inputs))


PARAMS = [pytest.param(flavor, c, id=f"{flavor}-{c.id}", marks=c.marks) for c in CASES for flavor in c.flavors]


@pytest.mark.parametrize(("flavor", "c"), PARAMS)
def test_layer_matches_keras(flavor, c, tmp_path):
    K = keras_module(flavor)
    rng = np.random.default_rng(zlib.crc32(c.id.encode()))
    model = _keras_model(K, c)
    randomize_keras_weights(model, rng)
    xs = _inputs(c, rng)
    feed = xs if len(xs) > 1 else xs[0]
    path = tmp_path / "model.h5"
    ref, got = keras_then_ours(model, feed, path)
    for a, e in zip(got, ref):
        assert_close_rel(a, e, c.rtol)

    if c.json:
        torch_model = tkio.model_from_json(model.to_json())
        report = torch_model.load_weights(path)
        assert report.all_loaded, str(report)
        got = as_list(torch_model.predict(feed))
        for a, e in zip(got, ref):
            assert_close_rel(a, e, c.rtol)


# ------------------------------------------------------------------------------------ weights and errors
def test_einsum_mha_weights_round_trip(tmp_path):
    """EinsumMultiHeadAttention <-> Keras's MultiHeadAttention weights, both directions."""
    import torch

    from torchkeras_io.modules import EinsumMultiHeadAttention

    src = EinsumMultiHeadAttention(8, 3, 5, num_heads=2, key_dim=3, value_dim=4, output_shape=(2, 3), use_bias=True)
    for p in src.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path)
    dst = EinsumMultiHeadAttention(8, 3, 5, num_heads=2, key_dim=3, value_dim=4, output_shape=(2, 3), use_bias=True)
    report = tkio.load_weights(dst, path)
    assert report.all_loaded, str(report)
    for (n, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), n
    import h5py

    with h5py.File(path, "r") as f:
        group = f[f.attrs["layer_names"][0]]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        assert [n.split("/", 1)[1].split(":")[0] for n in names] == ["query/kernel", "query/bias", "key/kernel", "key/bias",
                                                       "value/kernel", "value/bias", "attention_output/kernel",
                                                       "attention_output/bias"]  # fmt: skip
        assert group[names[0]].shape == (8, 2, 3) and group[names[6]].shape == (2, 4, 2, 3)


def test_unknown_tf_function_is_reported_not_run():
    cfg = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "name": "x", "config": {"name": "x", "batch_input_shape": [None, 4]},
         "inbound_nodes": []},
        {"class_name": "TFOpLambda", "name": "tf.os.system", "config": {"name": "tf.os.system", "function": "os.system"},
         "inbound_nodes": [["x", 0, 0, {"y": 1.0}]]}],
        "input_layers": [["x", 0, 0]], "output_layers": [["tf.os.system", 0, 0]]}}  # fmt: skip
    import json

    with pytest.raises(tkio.UnsupportedLayerError, match="os.system"):
        tkio.model_from_json(json.dumps(cfg))
