"""Old weight layouts against the real tf_keras oracle: cuDNN RNNs and Keras 1 files.

tf_keras's ``load_weights`` still converts these layouts itself
(``tf_keras/src/saving/legacy/hdf5_format.py``: ``_convert_rnn_weights`` and the Keras 1 branch of
``preprocess_weights_for_loading``). Each test writes a file in the old layout, loads it into a
*current* tf_keras layer (which converts it) to get reference outputs on CPU, loads the same file
with ``tkio`` into the torch module and compares outputs: ``max|a-b| <= 1e-4 * max|ref|``.

* cuDNN: ``CuDNNLSTM`` / ``CuDNNGRU`` (only in tf_keras's v1 API) are built but never called, so
  no GPU is needed; ``save_weights`` writes their native layout (bias ``8u`` / ``6u``).
* Keras 1: files are written by hand with h5py in the Keras 1 layout (no ``keras_version``
  attribute, per-gate ``W_i, U_i, b_i, …`` RNN weights, Theano-ordered ``'th'`` conv kernels,
  4-D ``Convolution1D`` kernels, ``Deconvolution2D`` kernels).
* tf_keras cannot run ``channels_first`` convolutions on CPU; those layers only convert the
  kernel (``load_weights``) and the converted weights are run in the ``channels_last`` twin (the
  kernel layout does not depend on ``data_format`` in Keras 2).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_close_rel
from torch import nn

import torchkeras_io as tkio

tf_keras = pytest.importorskip("tf_keras")
L = tf_keras.layers

RTOL = 1e-4
B, T, F, U = 2, 7, 3, 5  # batch, time steps, input features, units (F != U catches transposes)


def _cudnn_classes():
    try:  # the CuDNN layers only exist in tf_keras's TF1-compatible API
        from tf_keras.api._v1.keras import layers as v1
    except ImportError:  # pragma: no cover - other tf_keras layouts
        from tf_keras.src import layers as v1
    return v1.CuDNNLSTM, v1.CuDNNGRU


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def _model(input_shape, layer):
    return tf_keras.Sequential([L.InputLayer(input_shape=input_shape), layer])


def _randomize(model, rng, scale=0.5):
    model.set_weights([(rng.standard_normal(w.shape) * scale).astype(np.float32) for w in model.get_weights()])


def _x(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def _file_shapes(path) -> list:
    with h5py.File(path, "r") as f:
        out = []
        for name in f.attrs["layer_names"]:
            g = f[name]
            out += [g[w].shape for w in g.attrs["weight_names"]]
        return out


def _load(module, path, **kw):
    """tkio load (topological) that must load every layer of the module and the file."""
    report = tkio.load_weights(module, path, **kw)
    assert report.all_loaded, str(report)
    return report


def _write_keras1(path, layers: dict) -> None:
    """A Keras 1 weights file: ``{layer: [(weight name, array), ...]}``, no version attributes."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in layers]
        for name, weights in layers.items():
            g = f.create_group(name)
            g.attrs["weight_names"] = [w.encode() for w, _ in weights]
            for w, a in weights:
                g.create_dataset(w, data=a)


def _seq(y) -> np.ndarray:
    return (y[0] if isinstance(y, tuple) else y).detach().numpy()


# ------------------------------------------------------------------------------------- cuDNN
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidirectional"])
def test_cudnn_lstm(tmp_path, rng, bidirectional):
    cudnn_lstm, _ = _cudnn_classes()
    wrap = L.Bidirectional if bidirectional else (lambda layer: layer)
    src = _model((T, F), wrap(cudnn_lstm(U, return_sequences=True)))
    _randomize(src, rng)
    path = tmp_path / "cudnn_lstm.h5"
    src.save_weights(path)
    assert _file_shapes(path)[:3] == [(F, 4 * U), (U, 4 * U), (8 * U,)]  # the cuDNN layout

    ref = _model((T, F), wrap(L.LSTM(U, return_sequences=True)))  # sigmoid / tanh, as nn.LSTM
    ref.load_weights(path)  # tf_keras converts CuDNNLSTM -> LSTM
    x = _x(rng, B, T, F)

    module = nn.LSTM(F, U, batch_first=True, bidirectional=bidirectional)
    _load(module, path)
    assert_close_rel(_seq(module(torch.from_numpy(x))), ref(x).numpy(), RTOL)
    # torch keeps cuDNN's two biases as they were
    with h5py.File(path, "r") as f:
        group = f[f.attrs["layer_names"][0]]
        bias = group[group.attrs["weight_names"][2]][()]
    np.testing.assert_array_equal(module.bias_ih_l0.detach().numpy(), bias[: 4 * U])
    np.testing.assert_array_equal(module.bias_hh_l0.detach().numpy(), bias[4 * U :])


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bidirectional"])
def test_cudnn_gru(tmp_path, rng, bidirectional):
    _, cudnn_gru = _cudnn_classes()
    wrap = L.Bidirectional if bidirectional else (lambda layer: layer)
    src = _model((T, F), wrap(cudnn_gru(U, return_sequences=True)))
    _randomize(src, rng)
    path = tmp_path / "cudnn_gru.h5"
    src.save_weights(path)
    assert _file_shapes(path)[:3] == [(F, 3 * U), (U, 3 * U), (6 * U,)]

    gru = L.GRU(U, reset_after=True, recurrent_activation="sigmoid", return_sequences=True)
    ref = _model((T, F), wrap(gru))
    ref.load_weights(path)  # tf_keras converts CuDNNGRU -> GRU(reset_after=True)
    x = _x(rng, B, T, F)

    module = nn.GRU(F, U, batch_first=True, bidirectional=bidirectional)
    _load(module, path)
    assert_close_rel(_seq(module(torch.from_numpy(x))), ref(x).numpy(), RTOL)


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_cudnn_lstm_by_name_in_a_larger_model(tmp_path, rng):
    """A cuDNN layer among others, loaded by name from a full-model file."""
    cudnn_lstm, _ = _cudnn_classes()
    inp = L.Input((T, F))
    h = cudnn_lstm(U, return_sequences=True, name="rnn")(inp)
    src = tf_keras.Model(inp, L.Dense(2, name="head")(h))
    _randomize(src, rng)
    path = tmp_path / "full.h5"
    src.save(path)  # legacy full model: weights under /model_weights
    inp = L.Input((T, F))
    h = L.LSTM(U, return_sequences=True, name="rnn")(inp)
    ref = tf_keras.Model(inp, L.Dense(2, name="head")(h))
    ref.load_weights(path, by_name=True)
    x = _x(rng, B, T, F)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(F, U, batch_first=True)
            self.head = nn.Linear(U, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    net = Net()
    report = _load(net, path, by_name=True)
    assert sorted(report.loaded) == ["head", "rnn"]
    assert_close_rel(net(torch.from_numpy(x)).detach(), ref(x).numpy(), RTOL)


# ------------------------------------------------------------------------------ Keras 1 LSTM
def _keras1_lstm(rng, prefix):
    """Keras 1 LSTM weights: W, U, b for gates i, c, f, o (Keras 1's own order)."""
    out = []
    for gate in "icfo":
        out.append((f"{prefix}_W_{gate}", (rng.standard_normal((F, U)) * 0.5).astype(np.float32)))
        out.append((f"{prefix}_U_{gate}", (rng.standard_normal((U, U)) * 0.5).astype(np.float32)))
        out.append((f"{prefix}_b_{gate}", (rng.standard_normal(U) * 0.5).astype(np.float32)))
    return out


def test_keras1_lstm(tmp_path, rng):
    path = tmp_path / "keras1_lstm.h5"
    weights = _keras1_lstm(rng, "lstm_1")
    _write_keras1(path, {"lstm_1": weights})
    ref = _model((T, F), L.LSTM(U, recurrent_activation="sigmoid", return_sequences=True))
    ref.load_weights(path)  # tf_keras regroups i, c, f, o -> i, f, c, o
    x = _x(rng, B, T, F)

    module = nn.LSTM(F, U, batch_first=True)
    _load(module, path)
    assert_close_rel(_seq(module(torch.from_numpy(x))), ref(x).numpy(), RTOL)
    # gate regrouping by name: torch block 1 (f) is Keras 1's W_f, block 2 (g) its W_c
    w = dict(weights)
    np.testing.assert_array_equal(module.weight_ih_l0[U : 2 * U].detach().numpy(), w["lstm_1_W_f"].T)
    np.testing.assert_array_equal(module.weight_ih_l0[2 * U : 3 * U].detach().numpy(), w["lstm_1_W_c"].T)


def test_keras1_bidirectional_lstm(tmp_path, rng):
    """As in the corpus (kaggle-seizure): 24 arrays ``forward_lstm_1_W_i:0`` … ``backward_…``."""
    path = tmp_path / "keras1_bilstm.h5"
    weights = [(f"{n}:0", a) for n, a in _keras1_lstm(rng, "forward_lstm_1") + _keras1_lstm(rng, "backward_lstm_1")]
    _write_keras1(path, {"bidirectional_1": weights})
    ref = _model((T, F), L.Bidirectional(L.LSTM(U, recurrent_activation="sigmoid", return_sequences=True)))
    ref.load_weights(path)
    x = _x(rng, B, T, F)

    module = nn.LSTM(F, U, batch_first=True, bidirectional=True)
    _load(module, path)
    assert_close_rel(_seq(module(torch.from_numpy(x))), ref(x).numpy(), RTOL)


def test_keras1_gru_is_refused(tmp_path, rng):
    """Keras 1 GRU (9 arrays, gates z, r, h) is GRU(reset_after=False): no nn.GRU equivalent."""
    path = tmp_path / "keras1_gru.h5"
    weights = []
    for gate in "zrh":
        weights += [
            (f"gru_1_W_{gate}", (rng.standard_normal((F, U)) * 0.5).astype(np.float32)),
            (f"gru_1_U_{gate}", (rng.standard_normal((U, U)) * 0.5).astype(np.float32)),
            (f"gru_1_b_{gate}", (rng.standard_normal(U) * 0.5).astype(np.float32)),
        ]
    _write_keras1(path, {"gru_1": weights})
    # the file is a valid Keras 1 GRU: tf_keras reads it as GRU(reset_after=False) …
    ref = _model((T, F), L.GRU(U, reset_after=False, recurrent_activation="sigmoid", return_sequences=True))
    ref.load_weights(path)
    assert [w.shape for w in ref.get_weights()] == [(F, 3 * U), (U, 3 * U), (3 * U,)]
    # … which nn.GRU (reset_after=True semantics) cannot represent
    module = nn.GRU(F, U, batch_first=True)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(tkio.UnsupportedLayerError, match="reset_after=False"):
        tkio.load_weights(module, path)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


# ------------------------------------------------------------------------- Keras 1 convolutions
def _kernel(rng, *shape):
    return (rng.standard_normal(shape) * 0.5).astype(np.float32)


def test_keras1_th_conv2d(tmp_path, rng):
    """Theano dim ordering: kernel (out, in, kh, kw); non-square so a kh/kw swap would show."""
    cin, cout, kh, kw, h, w = 3, 4, 3, 2, 6, 5
    path = tmp_path / "keras1_th_conv2d.h5"
    _write_keras1(
        path,
        {
            "convolution2d_1": [
                ("convolution2d_1_W", _kernel(rng, cout, cin, kh, kw)),
                ("convolution2d_1_b", _kernel(rng, cout)),
            ]
        },
    )
    converted = _model((cin, h, w), L.Conv2D(cout, (kh, kw), data_format="channels_first"))
    converted.load_weights(path)  # tf_keras: (out, in, kh, kw) -> (kh, kw, in, out)
    ref = _model((h, w, cin), L.Conv2D(cout, (kh, kw)))
    ref.set_weights(converted.get_weights())
    x = _x(rng, B, cin, h, w)
    y_ref = ref(x.transpose(0, 2, 3, 1)).numpy().transpose(0, 3, 1, 2)

    module = nn.Conv2d(cin, cout, (kh, kw))
    _load(module, path)
    assert_close_rel(module(torch.from_numpy(x)).detach(), y_ref, RTOL)


def test_keras1_tf_conv2d(tmp_path, rng):
    """Keras 1 'tf' dim ordering already has the Keras 2 layout (kh, kw, in, out)."""
    cin, cout, kh, kw, h, w = 3, 4, 3, 2, 6, 5
    path = tmp_path / "keras1_tf_conv2d.h5"
    _write_keras1(
        path,
        {"conv": [("conv_W", _kernel(rng, kh, kw, cin, cout)), ("conv_b", _kernel(rng, cout))]},
    )
    ref = _model((h, w, cin), L.Conv2D(cout, (kh, kw)))
    ref.load_weights(path)
    x = _x(rng, B, h, w, cin)
    module = nn.Conv2d(cin, cout, (kh, kw))
    _load(module, path)
    y = module(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    assert_close_rel(y, ref(x).numpy(), RTOL)


def test_keras1_th_conv3d(tmp_path, rng):
    cin, cout, ks, size = 2, 3, (2, 3, 1), (4, 5, 3)
    path = tmp_path / "keras1_th_conv3d.h5"
    _write_keras1(
        path,
        {"conv3d": [("conv3d_W", _kernel(rng, cout, cin, *ks)), ("conv3d_b", _kernel(rng, cout))]},
    )
    converted = _model((cin, *size), L.Conv3D(cout, ks, data_format="channels_first"))
    converted.load_weights(path)  # (out, in, k1, k2, k3) -> (k1, k2, k3, in, out)
    ref = _model((*size, cin), L.Conv3D(cout, ks))
    ref.set_weights(converted.get_weights())
    x = _x(rng, B, cin, *size)
    y_ref = ref(x.transpose(0, 2, 3, 4, 1)).numpy().transpose(0, 4, 1, 2, 3)

    module = nn.Conv3d(cin, cout, ks)
    _load(module, path)
    assert_close_rel(module(torch.from_numpy(x)).detach(), y_ref, RTOL)


@pytest.mark.parametrize(
    "cin,cout,k,legacy",
    [
        (2, 4, 3, False),  # Keras 1.2 Convolution1D: (k, 1, in, out)
        (2, 4, 3, True),  # Keras 1.1: (out, in, k, 1)
        (1, 3, 3, False),  # a single input channel and out == k: the two layouts differ only in order
        (1, 3, 3, True),
    ],
    ids=["k1.2", "k1.1", "k1.2-in1", "k1.1-in1"],
)
def test_keras1_conv1d_4d_kernel(tmp_path, rng, cin, cout, k, legacy):
    length = 8
    kernel = _kernel(rng, cout, cin, k, 1) if legacy else _kernel(rng, k, 1, cin, cout)
    path = tmp_path / "keras1_conv1d.h5"
    _write_keras1(path, {"convolution1d_1": [("convolution1d_1_W", kernel), ("convolution1d_1_b", _kernel(rng, cout))]})
    ref = _model((length, cin), L.Conv1D(cout, k))
    ref.load_weights(path)  # tf_keras drops the extra axis (after transposing the 1.1 layout)
    x = _x(rng, B, length, cin)

    module = nn.Conv1d(cin, cout, k)
    _load(module, path)
    y = module(torch.from_numpy(x.transpose(0, 2, 1))).detach().numpy().transpose(0, 2, 1)
    assert_close_rel(y, ref(x).numpy(), RTOL)


@pytest.mark.parametrize("cin,cout", [(3, 4), (4, 4)], ids=["in!=out", "in==out"])
def test_keras1_deconvolution2d_tf(tmp_path, rng, cin, cout):
    """Keras 1 Deconvolution2D ('tf'): kernel (kh, kw, in, out); Keras 2 has (kh, kw, out, in).

    With in == out the shapes agree and only the Keras 1 version tells the layouts apart.
    """
    kh, kw, h, w = 3, 2, 4, 5
    path = tmp_path / "keras1_deconv.h5"
    _write_keras1(
        path,
        {
            "deconvolution2d_1": [
                ("deconvolution2d_1_W", _kernel(rng, kh, kw, cin, cout)),
                ("deconvolution2d_1_b", _kernel(rng, cout)),
            ]
        },
    )
    ref = _model((h, w, cin), L.Conv2DTranspose(cout, (kh, kw)))
    ref.load_weights(path)  # tf_keras: transpose (0, 1, 3, 2)
    x = _x(rng, B, h, w, cin)

    module = nn.ConvTranspose2d(cin, cout, (kh, kw))
    _load(module, path)
    y = module(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
    assert_close_rel(y, ref(x).numpy(), RTOL)


def test_keras1_deconvolution2d_th(tmp_path, rng):
    """Keras 1 Deconvolution2D ('th'): kernel (out, in, kh, kw)."""
    cin, cout, kh, kw, h, w = 3, 4, 3, 2, 4, 5
    path = tmp_path / "keras1_deconv_th.h5"
    _write_keras1(path, {"deconv": [("deconv_W", _kernel(rng, cout, cin, kh, kw)), ("deconv_b", _kernel(rng, cout))]})
    converted = _model((cin, h, w), L.Conv2DTranspose(cout, (kh, kw), data_format="channels_first"))
    converted.load_weights(path)  # tf_keras: transpose (2, 3, 0, 1)
    ref = _model((h, w, cin), L.Conv2DTranspose(cout, (kh, kw)))
    ref.set_weights(converted.get_weights())
    x = _x(rng, B, cin, h, w)
    y_ref = ref(x.transpose(0, 2, 3, 1)).numpy().transpose(0, 3, 1, 2)

    module = nn.ConvTranspose2d(cin, cout, (kh, kw))
    _load(module, path)
    assert_close_rel(module(torch.from_numpy(x)).detach(), y_ref, RTOL)


def test_keras2_kernel_is_never_read_as_keras1(tmp_path, rng):
    """The Keras 1 'th' re-ordering applies to Keras 1 files only.

    A Keras 2 1x1 Conv2D kernel (1, 1, 3, 3) has the shape a Keras 1 'th' kernel of a 3x3 conv
    1 -> 1 would have after conversion; loaded into such a conv it is a mismatch, not a silent
    re-ordering.
    """
    path = tmp_path / "keras2_conv.h5"
    src = _model((6, 6, 3), L.Conv2D(3, 1, use_bias=False, name="conv"))
    _randomize(src, rng)
    src.save_weights(path)
    with pytest.raises(tkio.WeightMismatchError) as err:
        tkio.load_weights(nn.Conv2d(1, 1, 3, bias=False), path)
    assert err.value.weight == "kernel"
    # in a Keras 1 file the same shape reads as a 'th' kernel (out, in, kh, kw) = (1, 1, 3, 3)
    kernel = _kernel(rng, 1, 1, 3, 3)
    k1 = tmp_path / "keras1_conv.h5"
    _write_keras1(k1, {"conv": [("conv_W", kernel), ("conv_b", _kernel(rng, 1))]})
    module = nn.Conv2d(1, 1, 3)
    _load(module, k1)
    np.testing.assert_array_equal(module.weight.detach().numpy(), kernel)
