"""tf-keras's TFOpLambda layers become Keras 3 ``keras.ops`` nodes in our `.keras`, which Keras 3 loads in safe mode and predicts as tf-keras; an op with no such form is refused before anything is written."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from conftest import (
    ORACLE_WARNINGS,
    as_list,
    assert_outputs_close,
    keras_module,
    randomize_keras_weights,
)

import torchkeras_io as tkio
from torchkeras_io.errors import UnsupportedLayerError

pytestmark = [*ORACLE_WARNINGS, pytest.mark.filterwarnings("ignore::torchkeras_io.errors.TorchKerasIOWarning")]

TOL = 1e-5


def _arithmetic(k, tf):
    """Scalar operands as tf-keras records them (``x + 3.0`` is ``tf.__operators__.add``), a
    hard-swish as MobileNetV3 writes it, tensor-tensor ops and reductions."""
    x = k.Input((6, 6, 4), name="x")
    y = k.layers.Conv2D(4, 3, padding="same", name="conv")(x)
    hs = y * tf.nn.relu6(y + 3.0) * (1.0 / 6.0)
    pooled = tf.reduce_mean(hs, axis=[1, 2], keepdims=True)
    gate = tf.sigmoid(k.layers.Dense(4, name="fc")(pooled))
    z = tf.math.maximum(hs * gate, -0.5) - 1.0
    z = tf.math.minimum(z, y) / 2.0
    z = tf.math.pow(tf.sqrt(tf.abs(z) + 1.0), 2.0) + tf.math.maximum(x, y)
    z = tf.nn.bias_add(tf.math.multiply(z, [1.0, -2.0, 0.5, 3.0]), [0.1, 0.2, 0.3, 0.4])
    z = -tf.clip_by_value(z, -2.0, 2.0) + tf.exp(tf.nn.leaky_relu(x, 0.1) * 0.1)
    return k.Model(x, [z, tf.reduce_sum(z, axis=1), tf.reduce_max(z, -1), tf.nn.gelu(z)], name="arith")


def _shapes(k, tf):
    """Axis-taking ops: concat, stack, reshape, transpose, expand_dims / squeeze, softmax, cast."""
    x = k.Input((5, 3), name="x")
    y = k.layers.Dense(3, name="d")(x)
    cat = tf.concat([x, y, x * 2.0], axis=-1)
    flat = k.layers.Dense(4, name="head")(tf.reshape(cat, (-1, 45)))
    st = tf.stack([x, y], axis=1)
    tr = tf.transpose(y, (0, 2, 1))
    sq = tf.squeeze(tf.expand_dims(y, 1), axis=1)
    sm = tf.nn.softmax(tf.nn.relu(y) + tf.tanh(x), axis=-1)
    return k.Model(x, [flat, st, tr, sq * 1.5, sm, tf.cast(tf.nn.silu(y), "float32")], name="shapes")


def _elementwise(k, tf):
    """The other element-wise functions, comparisons through ``cast``, the remaining reductions."""
    x = k.Input((3, 4), name="x")
    y = k.layers.Dense(4, name="d")(x)
    a = tf.math.log1p(tf.abs(y)) + tf.math.expm1(y * 0.1) + tf.math.rsqrt(tf.square(y) + 1.0) + tf.math.erf(y)
    b = tf.math.reciprocal(tf.abs(y) + 1.0) + tf.sign(y) + tf.floor(y) + tf.math.ceil(x) + tf.round(y * 2.0)
    c = tf.sin(y) * tf.cos(x) + tf.nn.softplus(y) + tf.nn.softsign(x) + tf.nn.selu(y) + tf.nn.elu(x)
    gate = tf.cast(tf.math.logical_and(tf.math.greater(y, -0.5), tf.math.less_equal(x, 1.0)), "float32")
    d = tf.math.floordiv(y * 4.0, 3.0) * gate + tf.math.log(tf.abs(x) + 2.0)
    return k.Model(x, [a, b, c, d, tf.nn.log_softmax(c, axis=1), tf.reduce_min(a, axis=-1),
                       tf.math.reduce_prod(b * 0.5 + 1.0, axis=1, keepdims=True)], name="elementwise")  # fmt: skip


def _mobilenet(k, tf):
    """tf-keras's own MobileNetV3Small at 32x32 (hard-sigmoid ``x + 3.0`` / ``x * (1/6)`` TFOpLambdas)."""
    from test_zoo_applications import build

    return build("MobileNetV3Small", "tf_keras")[1]


MODELS = {"arithmetic": (_arithmetic, (6, 6, 4)), "shapes": (_shapes, (5, 3)), "elementwise": (_elementwise, (3, 4)),
          "mobilenet_v3_small": (_mobilenet, (32, 32, 3))}  # fmt: skip


def _tf_keras_h5(name, tmp_path, seed=0):
    """(the tf-keras model, a feed, its outputs, the ``.h5`` tf-keras wrote)."""
    k = keras_module("tf_keras")
    tf = pytest.importorskip("tensorflow")
    factory, shape = MODELS[name]
    model = factory(k, tf)
    rng = np.random.default_rng(seed)
    if name == "mobilenet_v3_small":
        # the zoo's weights: randomize_keras_weights' N(0, 0.5) kernels blow a deep network up
        # (outputs of 1e12); He-normal kernels and batch-norm statistics calibrated on the data keep it O(1)
        from test_zoo_applications import feed_for, randomize

        feed = feed_for("MobileNetV3Small", shape)
        randomize(model, rng, np.concatenate([feed, feed_for("MobileNetV3Small", shape, n=14, seed=2)]))
    else:
        randomize_keras_weights(model, rng)
        feed = rng.normal(0.0, 1.0, (2, *shape)).astype("float32")
    path = str(tmp_path / f"{name}.h5")
    model.save(path)
    ref = as_list(model.predict(feed, verbose=0))
    assert all(1e-2 < float(np.max(np.abs(r))) < 1e3 for r in ref), "reference outputs of a usable magnitude"
    return model, feed, ref, path


def _layers(path) -> list:
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    return config["config"]["layers"]


def _close(got, ref):
    assert_outputs_close(got, ref, TOL)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tf_ops_become_keras3_op_nodes(name, tmp_path):
    model, feed, ref, h5 = _tf_keras_h5(name, tmp_path)
    assert any(layer.__class__.__name__ == "TFOpLambda" for layer in model.layers)
    ours = tkio.load_model(h5, compile=False)
    _close(ours.predict(feed), ref)
    out = str(tmp_path / f"{name}.keras")
    tkio.save_model(ours, out)
    layers = _layers(out)
    assert not [e["name"] for e in layers if e["class_name"] in ("TFOpLambda", "SlicingOpLambda")]
    assert any(str(e.get("module", "")).startswith("keras.src.ops") for e in layers)
    keras = keras_module("keras3")
    reloaded = keras.saving.load_model(out, compile=False)  # safe mode
    _close([np.asarray(o.detach().cpu() if hasattr(o, "detach") else o) for o in as_list(reloaded.predict(feed, verbose=0))], ref)  # fmt: skip
    _close(tkio.load_model(out, compile=False).predict(feed), ref)


def test_scalar_operands_keep_keras3_form(tmp_path):
    """``x + 3.0`` and ``x * (1/6)`` are Keras 3's own ``Add`` / ``Multiply`` nodes with the number as
    the second argument, as ``keras.ops.add(x, 3.0)`` writes them."""
    _, _, _, h5 = _tf_keras_h5("arithmetic", tmp_path)
    out = str(tmp_path / "a.keras")
    tkio.save_model(tkio.load_model(h5, compile=False), out)
    nodes = {(e["module"], e["class_name"], json.dumps(e["inbound_nodes"][0]["args"][1:]))
             for e in _layers(out) if str(e.get("module", "")).startswith("keras.src.ops")}  # fmt: skip
    assert ("keras.src.ops.numpy", "Add", "[3.0]") in nodes
    assert ("keras.src.ops.numpy", "Multiply", json.dumps([1.0 / 6.0])) in nodes
    assert ("keras.src.ops.nn", "Relu6", "[]") in nodes


@pytest.mark.parametrize("op", ["squared_difference", "l2_normalize"])
def test_op_without_keras3_form_is_refused(op, tmp_path):
    k = keras_module("tf_keras")
    tf = pytest.importorskip("tensorflow")
    x = k.Input((4,), name="x")
    y = k.layers.Dense(4, name="d")(x)
    z = tf.math.squared_difference(x, y) if op == "squared_difference" else tf.math.l2_normalize(y, axis=-1)
    model = k.Model(x, k.layers.Dense(2, name="head")(z))
    h5 = str(tmp_path / "m.h5")
    model.save(h5)
    ours = tkio.load_model(h5, compile=False)
    out = tmp_path / "m.keras"
    with pytest.raises(UnsupportedLayerError) as info:
        tkio.save_model(ours, str(out))
    message = str(info.value)
    assert "TFOpLambda" in message and op in message and "'.h5'" in message
    assert not os.path.exists(out) and not list(tmp_path.glob("m.keras*"))
    # tf-keras's own format still takes it
    tkio.save_model(ours, str(tmp_path / "again.h5"))
