"""Keras recurrent layers as native torch modules (load_model), against tf_keras and Keras 3.

Each case builds a small Keras model with random weights, saves it as HDF5, runs ``predict`` on
random inputs, loads the file with ``tkio.load_model`` and compares every output:
``max|a-b| <= 1e-4 * max|ref|``. Cases with masks run twice: once with masks that keep one
contiguous run of steps per sample (left / right padding: torch's packed-sequence kernel) and
once with holes and a fully masked sample (the time loop).
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import ORACLE_WARNINGS, assert_close_rel, keras_module
from torch import nn

import torchkeras_io as tkio
from torchkeras_io._layers.recurrent.modules import KerasGRU, KerasLSTM, KerasRecurrent, KerasSimpleRNN
from torchkeras_io._layers.recurrent.weights import RecurrentAdapter
from torchkeras_io._layers.wrappers import TimeDistributed
from torchkeras_io.modules import HardSigmoidTF

RTOL = 1e-4
B, T, F, U, V = 4, 6, 3, 4, 9  # batch, steps, features, units, vocabulary

pytestmark = [*ORACLE_WARNINGS, pytest.mark.filterwarnings("ignore::UserWarning")]

# kept steps per sample: one contiguous run each (packed kernel), or holes and an empty row (loop)
MASKS = {
    "runs": np.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0]], bool),
    "holes": np.array([[1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 0]], bool),
}


# ------------------------------------------------------------------------------------ inputs
def floats(*shape):
    return ("float", shape)


def ids():  # Embedding ids, 0 where masked
    return ("ids",)


def padded():  # float steps, all-zero where masked (for Masking)
    return ("padded",)


def bool_mask():
    return ("mask",)


def make_inputs(specs, seed: int, pattern: str) -> list:
    rng = np.random.default_rng(seed)
    keep = MASKS[pattern]
    out = []
    for spec in specs:
        if spec[0] == "float":
            out.append(rng.normal(0, 1, (B,) + spec[1]).astype("float32"))
        elif spec[0] == "ids":
            out.append((rng.integers(1, V, (B, T)) * keep).astype("int32"))
        elif spec[0] == "padded":
            out.append((rng.normal(0, 1, (B, T, F)) * keep[..., None]).astype("float32"))
        else:
            out.append(keep.copy())
    return out


def keras_inputs(K, specs) -> list:
    out = []
    for i, spec in enumerate(specs):
        if spec[0] == "float":
            out.append(K.Input(spec[1], name=f"in{i}"))
        elif spec[0] == "ids":
            out.append(K.Input((T,), dtype="int32", name=f"in{i}"))
        elif spec[0] == "padded":
            out.append(K.Input((T, F), name=f"in{i}"))
        else:
            out.append(K.Input((T,), dtype="bool", name=f"in{i}"))
    return out


# ------------------------------------------------------------------------------------- cases
CASES = []
FLAVORS = ("tf_keras", "keras3")


def case(name, layers=None, *, fn=None, inputs=None, flavors=FLAVORS, check=None, marks=()):
    """``layers(K)``: a Sequential's layers; or ``fn(K, inputs)``: a Functional model's outputs."""
    inputs = inputs or (floats(T, F),)
    masked = any(s[0] != "float" for s in inputs)
    for flavor in flavors:
        CASES.append(pytest.param(flavor, layers, fn, tuple(inputs), masked, check, id=f"{name}-{flavor}", marks=marks))


def types(*expected):
    """Check: the model's recurrent modules (``.rnn`` of each KerasRecurrent), in order, have these types."""

    def check(model, flavor):
        got = [type(m.rnn) for m in model.modules() if isinstance(m, KerasRecurrent)]
        assert got == list(expected), got

    return check


def hard_sigmoid_check(model, flavor):
    (rnn,) = [m.rnn for m in model.modules() if isinstance(m, KerasRecurrent)]
    expected = HardSigmoidTF if flavor == "tf_keras" else nn.Hardsigmoid  # Keras 3 changed its meaning
    assert type(rnn.keras_recurrent_activation) is expected


# plain layers: torch's own kernels where exact, the loop subclasses elsewhere
case("lstm", lambda K: [K.layers.LSTM(U)], check=types(nn.LSTM))
case("lstm_seq_nobias", lambda K: [K.layers.LSTM(U, return_sequences=True, use_bias=False)], check=types(nn.LSTM))
case("lstm_go_backwards", lambda K: [K.layers.LSTM(U, go_backwards=True, return_sequences=True)])
case("lstm_unroll", lambda K: [K.layers.LSTM(U, unroll=True, return_sequences=True)])
case("lstm_relu", lambda K: [K.layers.LSTM(U, activation="relu", return_sequences=True)], check=types(KerasLSTM))
case("lstm_hard_sigmoid", lambda K: [K.layers.LSTM(U, recurrent_activation="hard_sigmoid", return_sequences=True)],
     check=hard_sigmoid_check)  # fmt: skip
case("lstm_softsign_go_backwards", lambda K: [K.layers.LSTM(U, activation="softsign", go_backwards=True)])
case("gru", lambda K: [K.layers.GRU(U, return_sequences=True)], check=types(nn.GRU))
case("gru_reset_before", lambda K: [K.layers.GRU(U, reset_after=False, return_sequences=True)], check=types(KerasGRU))
case("gru_reset_before_hard_sigmoid_nobias",
     lambda K: [K.layers.GRU(U, reset_after=False, recurrent_activation="hard_sigmoid", use_bias=False)])  # fmt: skip
case("gru_selu_go_backwards", lambda K: [K.layers.GRU(U, activation="selu", go_backwards=True, return_sequences=True)])
case("simple_rnn", lambda K: [K.layers.SimpleRNN(U, return_sequences=True)], check=types(nn.RNN))
case("simple_rnn_relu_nobias", lambda K: [K.layers.SimpleRNN(U, activation="relu", use_bias=False)],
     check=types(nn.RNN))  # fmt: skip
case("simple_rnn_sigmoid_go_backwards",
     lambda K: [K.layers.SimpleRNN(U, activation="sigmoid", go_backwards=True, return_sequences=True)],
     check=types(KerasSimpleRNN))  # fmt: skip
case("rnn_of_cells", lambda K: [K.layers.RNN(K.layers.LSTMCell(U), return_sequences=True),
                                K.layers.RNN(K.layers.GRUCell(U, reset_after=False), go_backwards=True)],
     check=types(nn.LSTM, KerasGRU))  # fmt: skip
case("stacked_hard_sigmoid", lambda K: [
    K.layers.LSTM(8, recurrent_activation="hard_sigmoid", return_sequences=True), K.layers.Dropout(0.3),
    K.layers.LSTM(U, recurrent_activation="hard_sigmoid"), K.layers.Dense(5, activation="softmax")],
    flavors=("tf_keras",))  # fmt: skip


# return_state, initial states (Keras 2 list inputs in tf_keras files, kwargs in Keras 3's)
def _states_out(K, xs):
    seq, h, c = K.layers.LSTM(U, return_sequences=True, return_state=True)(xs[0])
    out, g = K.layers.GRU(U, return_state=True)(seq)
    r, s = K.layers.SimpleRNN(U, return_state=True, go_backwards=True)(seq)
    return [seq, h, c, out, g, r, s]


case("return_state", fn=_states_out)


def _seq2seq(K, xs):
    _, h, c = K.layers.LSTM(U, return_state=True, name="encoder")(xs[0])
    dec = K.layers.LSTM(U, return_sequences=True, name="decoder")(xs[1], initial_state=[h, c])
    return K.layers.TimeDistributed(K.layers.Dense(5, activation="softmax"))(dec)


case("seq2seq_initial_state", fn=_seq2seq, inputs=(floats(T, F), floats(T + 1, 2)))


def _decoder_with_state_inputs(K, xs):  # an inference decoder, states fed as model inputs
    seq, h, c = K.layers.LSTM(U, return_sequences=True, return_state=True,
                              recurrent_activation="hard_sigmoid")(xs[0], initial_state=[xs[1], xs[2]])  # fmt: skip
    out, g = K.layers.GRU(U, return_state=True, reset_after=False)(seq, initial_state=xs[3])
    return [K.layers.Dense(5)(seq), h, c, out, g]


case("decoder_state_inputs", fn=_decoder_with_state_inputs, inputs=(floats(T, F), floats(U), floats(U), floats(U)))


# masks: Embedding(mask_zero), Masking, zero_output_for_mask, explicit Keras 3 mask tensors
case("embedding_mask_lstm", lambda K: [K.layers.Embedding(V, F, mask_zero=True),
                                       K.layers.LSTM(U, return_sequences=True), K.layers.LSTM(U)],
     inputs=(ids(),))  # fmt: skip
case("embedding_mask_gru_timedistributed",
     lambda K: [K.layers.Embedding(V, F, mask_zero=True), K.layers.TimeDistributed(K.layers.Dense(5)),
                K.layers.GRU(U, reset_after=False, recurrent_activation="hard_sigmoid", return_sequences=True),
                K.layers.SimpleRNN(U)], inputs=(ids(),))  # fmt: skip
case("masking_lstm", lambda K: [K.layers.Masking(0.0), K.layers.LSTM(U, return_sequences=True),
                                K.layers.GRU(U, go_backwards=True, return_sequences=True),
                                K.layers.LSTM(U, go_backwards=True)], inputs=(padded(),))  # fmt: skip
case("masking_zero_output", lambda K: [K.layers.Masking(0.0),
                                       K.layers.LSTM(U, return_sequences=True, zero_output_for_mask=True),
                                       K.layers.SimpleRNN(U, zero_output_for_mask=True)],
     inputs=(padded(),))  # fmt: skip
case("masking_bidirectional",
     lambda K: [K.layers.Masking(0.0), K.layers.Bidirectional(K.layers.LSTM(U, return_sequences=True)),
                K.layers.Bidirectional(K.layers.GRU(U, reset_after=False), merge_mode="sum")],
     inputs=(padded(),))  # fmt: skip


def _functional_masks(K, xs):
    e = K.layers.Embedding(V, F, mask_zero=True)(xs[0])
    seq, h, c = K.layers.LSTM(U, return_sequences=True, return_state=True)(e)
    return [K.layers.Bidirectional(K.layers.GRU(U, return_sequences=True), merge_mode=None)(seq)[1], h]


case("functional_embedding_mask", fn=_functional_masks, inputs=(ids(),))


def _explicit_mask(K, xs):
    seq = K.layers.LSTM(U, return_sequences=True)(xs[0], mask=xs[1])
    return K.layers.Bidirectional(K.layers.GRU(U, activation="relu"), merge_mode="ave")(seq, mask=xs[1])


case("explicit_mask_tensor", fn=_explicit_mask, inputs=(floats(T, F), bool_mask()), flavors=("keras3",))


# Bidirectional
for _mode in ("concat", "sum", "mul", "ave"):
    case(f"bidirectional_{_mode}",
         lambda K, m=_mode: [K.layers.Bidirectional(K.layers.LSTM(U, return_sequences=True), merge_mode=m)],
         check=types(nn.LSTM))  # fmt: skip


def _bidirectional_none_state(K, xs):
    outs = K.layers.Bidirectional(K.layers.LSTM(U, return_state=True), merge_mode=None)(xs[0])
    return list(outs)  # [forward out, backward out, h_f, c_f, h_b, c_b]


case("bidirectional_none_return_state", fn=_bidirectional_none_state)
case("bidirectional_gru_reset_before_hard_sigmoid",
     lambda K: [K.layers.Bidirectional(K.layers.GRU(U, reset_after=False, recurrent_activation="hard_sigmoid"))],
     check=types(KerasGRU))  # fmt: skip
case("bidirectional_backward_layer", lambda K: [K.layers.Bidirectional(
    K.layers.SimpleRNN(U, return_sequences=True),
    backward_layer=K.layers.SimpleRNN(U, return_sequences=True, go_backwards=True))], check=types(nn.RNN))  # fmt: skip
case(
    "bidirectional_inner_go_backwards",
    lambda K: [K.layers.Bidirectional(K.layers.LSTM(U, go_backwards=True, return_sequences=True))],
    flavors=("tf_keras",),
)  # Keras 3 refuses it (both layers end up going backwards)


def _bidirectional_initial_state(K, xs):
    layer = K.layers.Bidirectional(K.layers.LSTM(U, return_sequences=True), merge_mode="concat")
    return layer(xs[0], initial_state=list(xs[1:]))


case("bidirectional_initial_state", fn=_bidirectional_initial_state, inputs=(floats(T, F),) + (floats(U),) * 4)


# TimeDistributed
case("timedistributed_dense", lambda K: [K.layers.LSTM(U, return_sequences=True, activation="relu"),
                                         K.layers.TimeDistributed(K.layers.Dense(2))])  # fmt: skip
case("timedistributed_lrcn", lambda K: [
    K.layers.TimeDistributed(K.layers.Conv2D(4, 3, padding="same", activation="relu")),
    K.layers.TimeDistributed(K.layers.MaxPooling2D(2)), K.layers.TimeDistributed(K.layers.Dropout(0.2)),
    K.layers.TimeDistributed(K.layers.Conv2D(3, 2, strides=2)), K.layers.TimeDistributed(K.layers.Flatten()),
    K.layers.LSTM(U), K.layers.Dense(3, activation="softmax")], inputs=(floats(T, 8, 8, 2),))  # fmt: skip

case("timedistributed_model", lambda K: [K.layers.TimeDistributed(K.Sequential([
    K.Input((5, 5, 2)), K.layers.Conv2D(3, 3), K.layers.BatchNormalization(), K.layers.Flatten(), K.layers.Dense(4)])),
    K.layers.GRU(U)], inputs=(floats(T, 5, 5, 2),))  # fmt: skip

# ConvLSTM
case("conv_lstm2d", lambda K: [
    K.layers.ConvLSTM2D(3, 3, padding="same", return_sequences=True),
    K.layers.ConvLSTM2D(2, (2, 3), strides=2, padding="same", go_backwards=True, recurrent_activation="hard_sigmoid"),
], inputs=(floats(T, 6, 7, 2),))  # fmt: skip


def _conv_lstm1d_state(K, xs):
    return list(K.layers.ConvLSTM1D(3, 2, dilation_rate=2, return_sequences=True, return_state=True)(xs[0]))


case("conv_lstm1d_return_state", fn=_conv_lstm1d_state, inputs=(floats(T, 7, 2),))

# tf.keras only: time_major
case("time_major", lambda K: [K.layers.LSTM(U, time_major=True, return_sequences=True),
                              K.layers.GRU(U, time_major=True, reset_after=False)],
     flavors=("tf_keras",))  # fmt: skip


def _randomize(model, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for w in model.weights:
        value = rng.normal(0.0, 0.5, tuple(int(s) for s in w.shape)).astype("float32")
        if "moving_variance" in (getattr(w, "path", None) or w.name):
            value = np.abs(value) + 0.5  # a variance: negative ones make NaNs, not a test
        w.assign(value)


def _build(K, layers, fn, specs):
    if layers is not None:
        return K.Sequential([keras_inputs(K, specs)[0]] + layers(K))
    xs = keras_inputs(K, specs)
    return K.Model(xs if len(xs) > 1 else xs[0], fn(K, xs))


def _outputs(y) -> list:
    return [np.asarray(v) for v in y] if isinstance(y, (list, tuple)) else [np.asarray(y)]


def _keras_predict(keras_model, xs) -> list:
    """Keras's outputs (a direct call: what predict computes, without tracing a graph per model)."""
    y = keras_model(xs if len(xs) > 1 else xs[0], training=False)
    y = y if isinstance(y, (list, tuple)) else [y]
    return [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v.numpy() for v in y]


def _compare(model, keras_model, xs):
    ref = _keras_predict(keras_model, xs)
    out = _outputs(model.predict(xs if len(xs) > 1 else xs[0]))
    assert len(out) == len(ref)
    for a, e in zip(out, ref):
        assert_close_rel(a, e, RTOL)


@pytest.mark.parametrize("flavor,layers,fn,specs,masked,check", CASES)
def test_keras_model(flavor, layers, fn, specs, masked, check, tmp_path):
    K = keras_module(flavor)
    keras_model = _build(K, layers, fn, specs)
    _randomize(keras_model, seed=1)
    path = str(tmp_path / "model.h5")
    keras_model.save(path)

    model = tkio.load_model(path, compile=False)
    for pattern in ("runs", "holes") if masked else ("runs",):
        _compare(model, keras_model, make_inputs(specs, seed=2, pattern=pattern))
    if check is not None:
        check(model.module, flavor)


# ------------------------------------------------------------------- weights back to Keras
BACK = {
    "gru_reset_before": (lambda K: [K.layers.GRU(U, reset_after=False, return_sequences=True)], (T, F)),
    "bidirectional_gru_reset_before": (lambda K: [K.layers.Bidirectional(
        K.layers.GRU(U, reset_after=False, recurrent_activation="hard_sigmoid"))], (T, F)),
    "timedistributed_conv_lstm": (lambda K: [
        K.layers.TimeDistributed(K.layers.Conv2D(2, 3)), K.layers.TimeDistributed(K.layers.Flatten()),
        K.layers.LSTM(U, recurrent_activation="hard_sigmoid")], (T, 5, 5, 2)),
}  # fmt: skip


@pytest.mark.parametrize("name", list(BACK))
def test_save_weights_back_to_keras(name, tmp_path):
    """A model built from a config writes weights that the same Keras model reads (both directions)."""
    K = keras_module("tf_keras")
    layers, shape = BACK[name]
    specs = (floats(*shape),)
    keras_model = _build(K, layers, None, specs)
    _randomize(keras_model, seed=3)
    path = str(tmp_path / "model.h5")
    keras_model.save(path)
    model = tkio.load_model(path, compile=False)
    xs = make_inputs(specs, seed=4, pattern="runs")
    expected = keras_model.predict(xs[0], verbose=0)

    out = str(tmp_path / "weights.h5")
    model.save_weights(out)
    _randomize(keras_model, seed=5)
    keras_model.load_weights(out)
    assert_close_rel(keras_model.predict(xs[0], verbose=0), expected, RTOL)


def test_gru_reset_before_bias_both_directions():
    """KerasGRU(reset_after=False): Keras bias (3u,) = swap(b_ih + b_hh); read back as b_ih (b_hh = 0)."""
    torch.manual_seed(0)
    gru = KerasGRU(F, U, batch_first=True, reset_after=False)
    adapter = RecurrentAdapter()
    assert adapter.match(gru)
    (layer,) = adapter.export(gru)
    kernel, rec, bias = layer.weights
    assert bias.shape == (3 * U,)
    b = gru.bias_ih_l0.detach() + gru.bias_hh_l0.detach()
    expected = torch.cat([b[U : 2 * U], b[:U], b[2 * U :]])  # torch r, z, n -> Keras z, r, h
    torch.testing.assert_close(bias.read(), expected)

    x = torch.randn(2, T, F)
    reference = gru(x)[0]
    other = KerasGRU(F, U, batch_first=True, reset_after=False)
    loaded = adapter.load(other, 0, [kernel, rec, bias], {})  # no extras: b_hh becomes 0
    with torch.no_grad():
        for name, lazy in loaded.items():
            getattr(other, name).copy_(lazy.read())
    assert not other.bias_hh_l0.any()
    torch.testing.assert_close(other(x)[0], reference, rtol=1e-5, atol=1e-6)


def test_plain_gru_refuses_reset_before_weights(tmp_path):
    K = keras_module("tf_keras")
    keras_model = _build(K, lambda K: [K.layers.GRU(U, reset_after=False)], None, (floats(T, F),))
    path = str(tmp_path / "gru.h5")
    keras_model.save_weights(path)
    with pytest.raises(tkio.UnsupportedLayerError, match="reset_after=False"):
        tkio.load_weights(nn.GRU(F, U, batch_first=True), path)
    module = KerasGRU(F, U, batch_first=True, reset_after=False, recurrent_activation=nn.Sigmoid())
    assert tkio.load_weights(module, path).all_loaded


def test_keras2_gru_config_defaults(tmp_path):
    """Keras <= 2.1 configs have no reset_after / recurrent_activation: GRU(reset_after=False, hard_sigmoid)."""
    K = keras_module("tf_keras")
    keras_model = _build(K, lambda K: [K.layers.GRU(U, reset_after=False, recurrent_activation="hard_sigmoid")],
                         None, (floats(T, F),))  # fmt: skip
    _randomize(keras_model, seed=6)
    config = json.loads(keras_model.to_json())
    for layer in config["config"]["layers"]:
        layer["config"].pop("reset_after", None)
        layer["config"].pop("recurrent_activation", None)
    path = str(tmp_path / "w.h5")
    keras_model.save_weights(path)
    model = tkio.model_from_json(json.dumps(config))
    assert model.load_weights(path).all_loaded
    (x,) = make_inputs((floats(T, F),), seed=7, pattern="runs")
    assert_close_rel(model.predict(x), keras_model.predict(x, verbose=0), RTOL)


# ------------------------------------------------------------------------------------ cuDNN
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cudnn_layers(kind, tmp_path):
    """CuDNNLSTM / CuDNNGRU files (built, never run: no GPU needed) against tf_keras's converted LSTM / GRU."""
    K = keras_module("tf_keras")
    try:
        from tf_keras.api._v1.keras import layers as v1
    except ImportError:  # pragma: no cover
        from tf_keras.src import layers as v1
    cudnn = v1.CuDNNLSTM if kind == "lstm" else v1.CuDNNGRU
    src = K.Sequential([K.Input((T, F)), K.layers.Bidirectional(cudnn(U, return_sequences=True)), cudnn(U)])
    _randomize(src, seed=8)
    path = str(tmp_path / "cudnn.h5")
    src.save(path)
    with h5py.File(path, "r") as f:
        assert "CuDNN" in f.attrs["model_config"]

    plain = K.layers.LSTM if kind == "lstm" else (lambda u, **kw: K.layers.GRU(u, reset_after=True, **kw))
    ref = K.Sequential([K.Input((T, F)), K.layers.Bidirectional(plain(U, return_sequences=True)), plain(U)])
    ref.load_weights(path)  # tf_keras converts the cuDNN layouts
    (x,) = make_inputs((floats(T, F),), seed=9, pattern="runs")
    model = tkio.load_model(path, compile=False)
    assert_close_rel(model.predict(x), ref.predict(x, verbose=0), RTOL)


# ----------------------------------------------------------------------------- unsupported
def _config(*layers, shape=(None, T, F)) -> str:
    layers = [dict(layers[0], config=dict(layers[0]["config"], batch_input_shape=list(shape)))] + list(layers[1:])
    return json.dumps({"class_name": "Sequential", "config": {"name": "m", "layers": layers}})


def _lstm(name="lstm", **kw):
    return {"class_name": "LSTM", "config": dict(dict(name=name, units=U), **kw)}


def test_stateful_is_refused():
    with pytest.raises(tkio.UnsupportedLayerError, match="stateful"):
        tkio.model_from_json(_config(_lstm(stateful=True)))


def test_bidirectional_with_a_different_backward_layer_is_refused():
    bidir = {"class_name": "Bidirectional", "config": {"name": "b", "layer": _lstm(),
             "backward_layer": _lstm("back", go_backwards=True, units=U + 1)}}  # fmt: skip
    with pytest.raises(tkio.UnsupportedLayerError, match="backward_layer"):
        tkio.model_from_json(_config(bidir))


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidirectional"])
@pytest.mark.parametrize("plain,loop", [(nn.LSTM, KerasLSTM), (nn.GRU, KerasGRU), (nn.RNN, KerasSimpleRNN)],
                         ids=["lstm", "gru", "simple_rnn"])  # fmt: skip
def test_loop_modules_are_torch_modules(plain, loop, bidirectional):
    """With sigmoid / tanh the time-loop subclasses compute what torch's kernels do, in torch's API."""
    torch.manual_seed(0)
    for batch_first in (True, False):
        a = plain(F, U, batch_first=batch_first, bidirectional=bidirectional)
        b = loop(F, U, batch_first=batch_first, bidirectional=bidirectional)
        b.load_state_dict(a.state_dict())
        x = torch.randn(2, T, F)
        h0 = torch.randn(2 if bidirectional else 1, 2 if batch_first else T, U)
        hx = (h0, torch.randn_like(h0)) if plain is nn.LSTM else h0
        for args in [(x,), (x[0],), (x, hx)]:
            flat = [torch.utils._pytree.tree_flatten(m(*args))[0] for m in (a, b)]
            for u, v in zip(*flat):
                torch.testing.assert_close(v, u, rtol=1e-5, atol=1e-6)


def test_timedistributed_module_shape():
    td = TimeDistributed(nn.Conv2d(2, 3, 3), "cf")
    assert td(torch.randn(2, T, 5, 5, 2)).shape == (2, T, 3, 3, 3)
