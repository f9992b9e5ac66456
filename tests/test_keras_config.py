"""Model configs of every Keras generation normalise to one graph form."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from torchkeras_io import FileFormatError
from torchkeras_io._keras.config import Ref, parse_model_config

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


def _corpus_configs():
    if not CORPUS.is_dir():
        return []
    out = []
    for f in sorted((CORPUS / "files").iterdir()):
        with h5py.File(f, "r") as h:
            if "model_config" in h.attrs:
                kv = h.attrs.get("keras_version")
                out.append((f.name, h.attrs["model_config"], kv.decode() if isinstance(kv, bytes) else kv))
    for f in sorted((CORPUS / "arch").iterdir()):
        data = json.loads(f.read_text())
        out.append((f.name, json.loads(data) if isinstance(data, str) else data, None))
    return out


CONFIGS = _corpus_configs()
SUBCLASSED = {"Primadya__sistemrekomendasidicoding__recommender_model.h5"}  # no layer graph in the file


@pytest.mark.skipif(not CONFIGS, reason="../shared/corpus is absent")
@pytest.mark.parametrize("name,config,version", CONFIGS, ids=[c[0][:60] for c in CONFIGS])
def test_every_corpus_config_parses(name, config, version):
    if name in SUBCLASSED:
        with pytest.raises(FileFormatError, match="not a Sequential or Functional"):
            parse_model_config(config, version)
        return
    model = parse_model_config(config, version)
    assert model.layers
    names = {layer.name for layer in model.layers}
    for layer in model.layers:
        for call in layer.calls:
            for ref in _refs(call.args) + _refs(call.kwargs):
                assert ref.layer in names
                assert 0 <= ref.node < max(1, len(model.layer(ref.layer).calls)), (layer.name, ref)


def _refs(x):
    if isinstance(x, Ref):
        return [x]
    if isinstance(x, list):
        return [r for v in x for r in _refs(v)]
    if isinstance(x, dict):
        return [r for v in x.values() for r in _refs(v)]
    return []


def test_keras1_sequential_and_renames():
    cfg = {"class_name": "Sequential", "config": [
        {"class_name": "Convolution2D", "config": {"name": "c", "nb_filter": 4, "nb_row": 3, "nb_col": 5,
                                                   "border_mode": "same", "subsample": [2, 2], "dim_ordering": "th",
                                                   "bias": True, "init": "glorot_uniform",
                                                   "batch_input_shape": [None, 3, 8, 8]}},
        {"class_name": "Merge", "config": {"name": "m", "mode": "concat", "concat_axis": 1}},
        {"class_name": "GRU", "config": {"name": "g", "output_dim": 3, "inner_activation": "hard_sigmoid"}},
        {"class_name": "Dropout", "config": {"name": "d", "p": 0.5}},
    ]}  # fmt: skip
    model = parse_model_config(cfg, "1.2.2")
    assert model.kind == "Sequential" and model.generation == 1 and model.input_shape == (None, 3, 8, 8)
    conv, merge, gru, drop = model.layers
    assert conv.class_name == "Conv2D"
    assert conv.config["filters"] == 4 and conv.config["kernel_size"] == [3, 5] and conv.config["strides"] == [2, 2]
    assert conv.config["padding"] == "same" and conv.config["data_format"] == "channels_first"
    assert conv.config["use_bias"] is True and "nb_row" not in conv.config
    assert merge.class_name == "Concatenate" and merge.config["axis"] == 1
    assert gru.config["units"] == 3 and gru.config["recurrent_activation"] == "hard_sigmoid"
    assert gru.config["reset_after"] is False
    assert drop.config["rate"] == 0.5


def test_keras2_nested_model_nodes_renumbered():
    """Keras 2 counts a nested model's calls from 1; we count every layer's calls from 0."""
    cfg = {"class_name": "Functional", "config": {
        "name": "outer", "layers": [
            {"class_name": "InputLayer", "name": "a", "config": {"name": "a", "batch_input_shape": [None, 4]},
             "inbound_nodes": []},
            {"class_name": "InputLayer", "name": "b", "config": {"name": "b", "batch_input_shape": [None, 4]},
             "inbound_nodes": []},
            {"class_name": "Functional", "name": "enc", "config": {
                "name": "enc", "layers": [
                    {"class_name": "InputLayer", "name": "i", "config": {"name": "i", "batch_input_shape": [None, 4]},
                     "inbound_nodes": []},
                    {"class_name": "Dense", "name": "d", "config": {"name": "d", "units": 2},
                     "inbound_nodes": [[["i", 0, 0, {}]]]}],
                "input_layers": [["i", 0, 0]], "output_layers": [["d", 0, 0]]},
             "inbound_nodes": [[["a", 0, 0, {}]], [["b", 0, 0, {}]]]},
            {"class_name": "Concatenate", "name": "cat", "config": {"name": "cat", "axis": -1},
             "inbound_nodes": [[["enc", 1, 0, {}], ["enc", 2, 0, {}]]]}],
        "input_layers": [["a", 0, 0], ["b", 0, 0]], "output_layers": [["cat", 0, 0]]}}  # fmt: skip
    model = parse_model_config(cfg, "2.4.0")
    cat = model.layer("cat")
    assert cat.calls[0].args == [[Ref("enc", 0, 0), Ref("enc", 1, 0)]]
    enc = model.layer("enc")
    assert enc.model is not None and enc.model.kind == "Functional" and [x.name for x in enc.model.layers] == ["i", "d"]
    assert model.inputs == [Ref("a", 0, 0), Ref("b", 0, 0)] and model.outputs == [Ref("cat", 0, 0)]


def test_keras3_nodes_and_policies():
    cfg = {"class_name": "Functional", "config": {
        "name": "f", "layers": [
            {"class_name": "InputLayer", "name": "x", "config": {"name": "x", "batch_shape": [None, 5], "dtype": "float32"},
             "inbound_nodes": []},
            {"class_name": "NotEqual", "name": "ne", "config": {"name": "ne"}, "inbound_nodes": [
                {"args": [{"class_name": "__keras_tensor__", "config": {"shape": [None, 5], "dtype": "float32",
                                                                         "keras_history": ["x", 0, 0]}}, 0.0],
                 "kwargs": {}}]},
            {"class_name": "Dense", "name": "d", "config": {
                "name": "d", "units": 3,
                "dtype": {"module": "keras", "class_name": "DTypePolicy", "config": {"name": "mixed_float16"}}},
             "inbound_nodes": [{"args": [{"class_name": "__keras_tensor__", "config": {"keras_history": ["x", 0, 0]}}],
                                "kwargs": {"mask": {"class_name": "__keras_tensor__",
                                                    "config": {"keras_history": ["ne", 0, 0]}}}}]}],
        "input_layers": ["x", 0, 0], "output_layers": ["d", 0, 0]}}  # fmt: skip
    model = parse_model_config(json.dumps(cfg), "3.9.2")
    assert model.generation == 3
    assert model.layer("x").config["batch_input_shape"] == [None, 5]
    assert model.layer("ne").calls[0].args == [Ref("x", 0, 0), 0.0]
    assert model.layer("d").calls[0].kwargs == {"mask": Ref("ne", 0, 0)}
    assert model.layer("d").config["dtype"] == "float16"
    assert model.inputs == [Ref("x", 0, 0)]


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        "[]",
        '{"class_name": "Sequential", "config": 3}',
        '{"class_name": "Functional", "config": {"layers": [{"config": {}}]}}',
        '{"class_name": "Functional", "config": {"layers": [], "output_layers": [["x", 0, 0]]}}',
    ],
)
def test_bad_configs_raise_our_error(bad):
    with pytest.raises(FileFormatError):
        parse_model_config(bad)


def test_deep_nesting_is_refused_not_recursed():
    cfg = {"class_name": "Sequential", "config": {"name": "s", "layers": []}}
    for _ in range(200):
        cfg = {"class_name": "Sequential", "config": {"name": "s", "layers": [cfg]}}
    with pytest.raises(FileFormatError, match="nested"):
        parse_model_config(cfg)


def test_keras1_list_sequential_saves_as_keras3(tmp_path):
    """A Keras 1 list-style Sequential config (what Keras 1.x and 2.0 wrote) reaches the Keras 3
    dialect as Keras 2 names and a leading InputLayer, and the .keras file rebuilds the same model."""
    import torch

    import torchkeras_io as tkio
    from torchkeras_io._keras.keras3 import to_keras3

    cfg = {"class_name": "Sequential", "config": [
        {"class_name": "Convolution1D", "config": {"name": "c", "nb_filter": 4, "filter_length": 3, "border_mode": "same",
                                                   "subsample_length": 1, "activation": "relu", "bias": True,
                                                   "init": "glorot_uniform", "W_regularizer": None, "input_dim": None,
                                                   "batch_input_shape": [None, 10, 5], "input_dtype": "float32"}},
        {"class_name": "Dropout", "config": {"name": "d", "p": 0.5}},
        {"class_name": "Flatten", "config": {"name": "f"}},
        {"class_name": "Dense", "config": {"name": "o", "output_dim": 2, "init": "glorot_uniform", "bias": True,
                                           "activation": "linear", "W_regularizer": None, "input_dim": None}},
    ]}  # fmt: skip
    config3 = to_keras3(cfg)
    layers = config3["config"]["layers"]
    assert [x["class_name"] for x in layers] == ["InputLayer", "Conv1D", "Dropout", "Flatten", "Dense"]
    assert layers[0]["config"]["batch_shape"] == [None, 10, 5] and layers[0]["config"]["name"] == "c_input"
    assert layers[1]["config"]["filters"] == 4 and layers[1]["config"]["padding"] == "same"
    assert layers[2]["config"]["rate"] == 0.5 and layers[4]["config"]["units"] == 2
    assert cfg["config"][0]["class_name"] == "Convolution1D"  # not modified

    model = tkio.model_from_json(json.dumps(cfg))
    tkio.save_model(model, tmp_path / "m.keras")
    back = tkio.load_model(tmp_path / "m.keras", compile=False)
    x = torch.randn(3, 10, 5)
    model.module.eval(), back.module.eval()
    assert torch.equal(model.module(x), back.module(x))
