"""torch -> file -> torch is bit-exact for every adapter, every dtype, every buffer."""

from __future__ import annotations

import h5py
import pytest
import torch
from torch import nn

import torchkeras_io as tkio

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


class Custom(nn.Module):
    """A module no adapter knows: its tensors travel under their torch names."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(3, 2))
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("scratch", torch.zeros(4), persistent=False)
        self.inner = nn.Linear(2, 2)


def _zoo() -> dict:
    return {
        "linear": nn.Linear(5, 3),
        "linear_nobias": nn.Linear(5, 3, bias=False),
        "conv1d": nn.Conv1d(4, 6, 3, dilation=2),
        "conv2d_groups": nn.Conv2d(4, 6, 3, groups=2, padding=1),
        "conv3d": nn.Conv3d(2, 4, (1, 2, 3), bias=False),
        "depthwise1d": nn.Conv1d(3, 6, 3, groups=3),
        "depthwise2d": nn.Conv2d(4, 12, 3, groups=4),
        "convT1d": nn.ConvTranspose1d(4, 3, 3, stride=2),
        "convT2d": nn.ConvTranspose2d(4, 3, (2, 3)),
        "convT3d": nn.ConvTranspose3d(2, 3, 2),
        "convT_groups": nn.ConvTranspose2d(4, 6, 3, groups=2),  # no Keras equivalent: generic
        "bn1d": nn.BatchNorm1d(5),
        "bn2d_noaffine": nn.BatchNorm2d(4, affine=False),
        "bn3d": nn.BatchNorm3d(3),
        "bn_no_stats": nn.BatchNorm2d(3, track_running_stats=False),  # generic
        "layernorm": nn.LayerNorm([3, 4]),
        "layernorm_nobias": nn.LayerNorm(4, bias=False),
        "groupnorm": nn.GroupNorm(2, 6),
        "embedding": nn.Embedding(11, 4),
        "prelu": nn.PReLU(),
        "prelu_c": nn.PReLU(5),
        "rnn": nn.RNN(3, 4, num_layers=2, nonlinearity="relu"),
        "lstm": nn.LSTM(3, 4, num_layers=2, bidirectional=True),
        "lstm_nobias": nn.LSTM(3, 4, bias=False, batch_first=True),
        "lstm_proj": nn.LSTM(3, 4, proj_size=2),  # generic
        "gru": nn.GRU(3, 5, bidirectional=True),
        "mha": nn.MultiheadAttention(8, 2),
        "mha_nobias_kv": nn.MultiheadAttention(8, 4, bias=False, kdim=5, vdim=3),
        "mha_bias_kv": nn.MultiheadAttention(8, 2, add_bias_kv=True),  # generic + Linear
        "custom": Custom(),
        "seq": nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)),
    }


def _randomize(module: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            if t.dtype.is_floating_point:
                t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype))
            elif t.dtype == torch.int64:
                t.copy_(torch.randint(0, 1000, t.shape, generator=g))


def _assert_bit_exact(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert sa[key].device == sb[key].device, key
        if sa[key].dtype.is_floating_point:
            # bitwise: NaN payloads and signed zeros included
            width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[sa[key].element_size()]
            assert torch.equal(sa[key].view(width), sb[key].view(width)), key
        else:
            assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", list(_zoo()))
def test_roundtrip_bit_exact(tmp_path, name, dtype):
    src = _zoo()[name].to(dtype)
    dst = _zoo()[name].to(dtype)
    _randomize(src)
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path)
    report = tkio.load_weights(dst, path)
    assert report.all_loaded, str(report)
    _assert_bit_exact(src, dst)
    by_name = _zoo()[name].to(dtype)
    assert tkio.load_weights(by_name, path, by_name=True).all_loaded
    _assert_bit_exact(src, by_name)


def test_special_values_survive(tmp_path):
    src, dst = nn.Linear(4, 4), nn.Linear(4, 4)
    with torch.no_grad():
        src.weight[0] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    tkio.save_weights(src, tmp_path / "w.h5")
    tkio.load_weights(dst, tmp_path / "w.h5")
    _assert_bit_exact(src, dst)


def test_lstm_extras_used_only_when_consistent(tmp_path):
    """Keras holds b_ih + b_hh; torch's split comes back exactly from our own file."""
    src = nn.LSTM(3, 4)
    _randomize(src)
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path)
    with h5py.File(path, "r") as f:
        g = f["lstm"]
        names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
        assert names == ["lstm/lstm_cell/kernel:0", "lstm/lstm_cell/recurrent_kernel:0", "lstm/lstm_cell/bias:0"]
        keras_bias = torch.from_numpy(g["lstm/lstm_cell/bias:0"][()])
    assert torch.equal(keras_bias, (src.bias_ih_l0 + src.bias_hh_l0).detach())
    # Someone edits the Keras bias (as Keras would when it re-saves after training):
    with h5py.File(path, "r+") as f:
        f["lstm/lstm/lstm_cell/bias:0"][...] = keras_bias.numpy() + 1
    dst = nn.LSTM(3, 4)
    tkio.load_weights(dst, path)
    assert torch.equal(dst.bias_ih_l0.detach(), keras_bias + 1)
    assert torch.equal(dst.bias_hh_l0.detach(), torch.zeros(16))


def _layout(path) -> tuple:
    """The layers a weights file lists, {layer: Keras class}, and its top-level weight names."""

    def strs(values) -> list:
        return [v.decode() if isinstance(v, bytes) else v for v in values]

    with h5py.File(path, "r") as f:
        layers = strs(f.attrs["layer_names"])
        classes = {name: f[name].attrs["keras_class"] for name in layers}
        return layers, classes, strs(f["top_level_model_weights"].attrs["weight_names"])


def test_layer_structure_follows_module_paths(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.LSTM(3, 3, num_layers=2), nn.Identity()))
    tkio.save_weights(model, tmp_path / "a.h5")
    layers, classes, top = _layout(tmp_path / "a.h5")
    assert layers == ["0", "2.0_l0", "2.0_l1"]
    assert [classes[name] for name in layers] == ["Dense", "LSTM", "LSTM"]
    assert top == []
    tkio.save_weights(Custom(), tmp_path / "b.h5")
    layers, _, top = _layout(tmp_path / "b.h5")
    assert top == ["scale", "steps", "mask"]
    assert layers == ["inner"]


def test_shared_module_is_one_layer(tmp_path):
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    tkio.save_weights(model, tmp_path / "w.h5")
    assert _layout(tmp_path / "w.h5")[0] == ["0"]


def test_layer_names_mapping_and_callable(tmp_path):
    src = nn.Sequential(nn.Linear(2, 3), nn.LSTM(3, 4, num_layers=2))
    _randomize(src)
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path, layer_names={"0": "dense_1", "1": ["lstm_1", "lstm_2"]})
    with h5py.File(path, "r") as f:
        assert [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]] == [
            "dense_1",
            "lstm_1",
            "lstm_2",
        ]
    dst = nn.Sequential(nn.Linear(2, 3), nn.LSTM(3, 4, num_layers=2))
    report = tkio.load_weights(
        dst, path, by_name=True, layer_names=lambda p: {"0": "dense_1", "1": ["lstm_1", "lstm_2"]}[p]
    )
    assert report.loaded == ["dense_1", "lstm_1", "lstm_2"]
    _assert_bit_exact(src, dst)


def test_layer_names_errors(tmp_path):
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 3))
    with pytest.raises(tkio.TorchKerasIOError, match="not layers"):
        tkio.save_weights(model, tmp_path / "w.h5", layer_names={"5": "x"})
    with pytest.raises(tkio.TorchKerasIOError, match="used twice"):
        tkio.save_weights(model, tmp_path / "w.h5", layer_names=lambda p: "same")
    # '/' nests groups as tf-keras does ("conv1/conv"); what would escape or alias a group is refused
    for bad in ("../b", "/a", "a//b", "a/./b", "a/..", "a\x00b"):
        with pytest.raises(tkio.TorchKerasIOError, match="not a Keras layer name"):
            tkio.save_weights(model, tmp_path / "w.h5", layer_names={"0": bad})
    assert not list(tmp_path.iterdir())


def test_uninitialized_lazy_module_is_refused(tmp_path):
    with pytest.raises(tkio.TorchKerasIOError, match="uninitialized"):
        tkio.save_weights(nn.LazyLinear(3), tmp_path / "w.h5")


def test_container_mapped_as_nested_keras_model(tmp_path):
    """A container given a Keras name is one layer: sub-layers' trainable weights, then the rest."""

    def make():
        return nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)), nn.Linear(2, 1))

    src = make()
    _randomize(src)
    path = tmp_path / "w.h5"
    tkio.save_weights(src, path, layer_names={"0": "encoder", "1": "head"})
    with h5py.File(path, "r") as f:
        assert [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]] == ["encoder", "head"]
        names = [n.decode() if isinstance(n, bytes) else n for n in f["encoder"].attrs["weight_names"]]
    assert names == [
        "encoder/0/kernel:0",
        "encoder/0/bias:0",
        "encoder/1/gamma:0",
        "encoder/1/beta:0",
        "encoder/2/kernel:0",
        "encoder/2/bias:0",
        "encoder/1/moving_mean:0",
        "encoder/1/moving_variance:0",
    ]
    dst = make()
    report = tkio.load_weights(dst, path, by_name=True, layer_names={"0": "encoder", "1": "head"})
    assert report.loaded == ["encoder", "head"]
    _assert_bit_exact(src, dst)
    with pytest.raises(tkio.TorchKerasIOError, match="inside"):
        tkio.save_weights(src, path, layer_names={"0": "encoder", "0.0": "x"})
