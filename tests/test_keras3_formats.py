"""Keras 3 native formats: the ``.keras`` ZIP and ``.weights.h5`` variable store, both ways,
checked against real Keras 3 (torch backend) and tf-keras."""

from __future__ import annotations

import json
import os
import struct
import warnings
import zipfile

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_close_rel, keras_module
from test_export import BATCH_AXIS, CASES, INT_INPUTS, _case_io, _inputs, _prepare, _torch_outputs
from torch import nn

import torchkeras_io as tkio

keras = keras_module("keras3")
CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "files")
FAMILIES = ["mlp", "vgg", "lstm_text", "bigru_text", "transformer_block"]


def _first(ys):
    return ys if isinstance(ys, (list, tuple)) else [ys]


def _max_rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """One Keras 3 model per family, from our ``.keras`` file: (module, keras model, inputs, refs, rtol, dir)."""
    out = {}
    for name in FAMILIES:
        factory, shapes, rtol = CASES[name]
        module = _prepare(factory)
        d = tmp_path_factory.mktemp(name)
        tkio.save_model(module, d / "model.keras", input_shape=shapes if len(shapes) > 1 else shapes[0])
        xs, kxs = _inputs(shapes, False, INT_INPUTS.get(name))
        refs = _torch_outputs(module, xs, False)
        model = keras.saving.load_model(d / "model.keras", compile=False)
        out[name] = (module, model, xs, kxs, refs, rtol, d)
    return out


def _kpredict(model, kxs):
    return _first(model.predict(kxs if len(kxs) > 1 else kxs[0], verbose=0))


# ------------------------------------------------------------------------------ .keras, ours -> K3
@pytest.mark.parametrize("name", FAMILIES)
def test_keras3_load_model_opens_our_keras_file(families, name):
    _, model, _, kxs, refs, rtol, d = families[name]
    for y, ref in zip(_kpredict(model, kxs), refs):
        assert_close_rel(np.asarray(y), ref, rtol)
    with zipfile.ZipFile(d / "model.keras") as zf:
        assert {i.filename for i in zf.infolist()} == {"metadata.json", "config.json", "model.weights.h5"}
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
        config = json.loads(zf.read("config.json"))
    assert config["module"] and config["class_name"] == "Functional" and "registered_name" in config
    first = config["config"]["layers"][0]
    assert first["class_name"] == "InputLayer" and "batch_shape" in first["config"]
    assert all(isinstance(node, dict) and "args" in node for layer in config["config"]["layers"][1:]
               for node in layer["inbound_nodes"])  # fmt: skip


@pytest.mark.parametrize("name", ["resnet", "mobilenet_block", "two_in_two_out", "autoencoder", "misc_layers",
                                  "conv1d"])  # fmt: skip
@pytest.mark.parametrize("channels_last", [False, True], ids=["torch_layout", "channels_last"])
def test_keras3_opens_the_other_export_cases(name, channels_last, tmp_path):
    factory, shapes, rtol = CASES[name]
    module = _prepare(factory)
    tkio.save_model(module, tmp_path / "m.keras", input_shape=shapes if len(shapes) > 1 else shapes[0],
                    channels_last=channels_last)  # fmt: skip
    xs, kxs = _inputs(shapes, channels_last)
    model = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    for y, ref in zip(_kpredict(model, kxs), _torch_outputs(module, xs, channels_last)):
        assert_close_rel(np.asarray(y), ref, rtol)


@pytest.mark.parametrize("name", ["lstm_seq_first", "gru_transposed", "transformer_seq_first"])
def test_keras3_opens_sequence_first_exports(name, tmp_path):
    _, shapes, _ = CASES[name]
    module = _prepare(CASES[name][0])
    tkio.save_model(module, tmp_path / "m.keras", input_shape=shapes[0], batch_axis=BATCH_AXIS.get(name, (0,))[0])
    kxs, refs, rtol = _case_io(name, False, module)
    model = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    for y, ref in zip(_kpredict(model, kxs), refs):
        assert_close_rel(np.asarray(y), ref, rtol)


@pytest.mark.parametrize("name", FAMILIES)
def test_weights_h5_both_ways_with_keras3(families, name, tmp_path):
    module, model, xs, kxs, refs, rtol, _ = families[name]
    # ours -> Keras 3 load_weights, into a freshly initialised copy of the model
    tkio.save_weights(module, tmp_path / "ours.weights.h5")
    fresh = keras.models.clone_model(model)
    fresh.load_weights(tmp_path / "ours.weights.h5")
    for y, ref in zip(_kpredict(fresh, kxs), refs):
        assert_close_rel(np.asarray(y), ref, rtol)
    # Keras 3's -> ours, into a fresh torch module (Keras 3 loading semantics: by path)
    model.save_weights(tmp_path / "k3.weights.h5")
    target = CASES[name][0]()
    target.eval()
    report = tkio.load_weights(target, tmp_path / "k3.weights.h5")
    assert report.all_loaded, str(report)
    for y, ref in zip(_torch_outputs(target, xs, False), refs):
        assert_close_rel(y, ref, rtol)
    # our .keras -> load_weights into a fresh module (the archive's config gives the layer order)
    target = CASES[name][0]()
    assert tkio.load_weights(target.eval(), families[name][6] / "model.keras").all_loaded
    for y, ref in zip(_torch_outputs(target, xs, False), refs):
        assert_close_rel(y, ref, rtol)
    # Keras 3's .keras -> our load_model
    model.save(tmp_path / "k3.keras")
    ours = tkio.load_model(tmp_path / "k3.keras", compile=False)
    for y, ref in zip(_first(ours.predict(xs if len(xs) > 1 else xs[0])), refs):
        assert_close_rel(np.asarray(y), ref, rtol)


def test_var_paths_follow_keras3(families, tmp_path):
    """Recurrent layers under cell/, Bidirectional forward/backward, MHA's four EinsumDense."""
    paths = {}
    for name in ("bigru_text", "transformer_block"):
        tkio.save_weights(families[name][0], tmp_path / f"{name}.weights.h5")
        with h5py.File(tmp_path / f"{name}.weights.h5") as f:
            paths[name] = set()
            f.visititems(lambda n, o, s=paths[name]: s.add(n) if isinstance(o, h5py.Dataset) else None)
    assert {"layers/bidirectional/forward_layer/cell/vars/0", "layers/bidirectional/backward_layer/cell/vars/2",
            "layers/simple_rnn/cell/vars/2", "layers/embedding/vars/0"} <= paths["bigru_text"]  # fmt: skip
    assert {"layers/multi_head_attention/query_dense/vars/1", "layers/multi_head_attention_1/output_dense/vars/0",
            "layers/layer_normalization_1/vars/1"} <= paths["transformer_block"]  # fmt: skip


# ------------------------------------------------------------------------------ round trip, torch
def test_torch_round_trip_is_bit_exact_and_extras_are_kept(tmp_path):
    def make(dtype):
        return nn.Sequential(nn.Conv1d(3, 4, 3), nn.BatchNorm1d(4), nn.LSTM(4, 5, batch_first=True),
                             nn.Linear(5, 2)).to(dtype)  # fmt: skip

    torch.manual_seed(0)
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        module = make(dtype)
        with torch.no_grad():
            module[1].num_batches_tracked.fill_(7)
            module[1].running_var.uniform_(0.5, 2.0)
            module[2].bias_hh_l0.uniform_(-1, 1)
        tkio.save_weights(module, tmp_path / "m.weights.h5")
        dst = make(dtype)
        assert tkio.load_weights(dst, tmp_path / "m.weights.h5").all_loaded
        for (k, a), b in zip(module.state_dict().items(), dst.state_dict().values()):
            assert a.dtype == b.dtype and torch.equal(a, b), k
    # Keras 3 ignores the torch-only extras: num_batches_tracked and the two LSTM biases
    tkio.save_weights(make(torch.float32)[:3], tmp_path / "s.weights.h5")
    with h5py.File(tmp_path / "s.weights.h5") as f:
        assert "layers/batch_normalization/torch_extras/num_batches_tracked" in f
        assert "layers/lstm/torch_extras/bias_hh_l0" in f
    k = keras.Sequential([keras.Input((6, 3)), keras.layers.Conv1D(4, 3), keras.layers.BatchNormalization(),
                          keras.layers.LSTM(5, return_sequences=True)])  # fmt: skip
    k.load_weights(tmp_path / "s.weights.h5")  # raises if Keras 3 saw anything it did not expect


def test_tf_keras_reads_our_weights_h5(tmp_path):
    tf_keras = keras_module("tf_keras")
    module = _prepare(CASES["lstm_text"][0])
    tkio.save_model(module, tmp_path / "legacy.h5", input_shape=(7,))  # the architecture, as tf-keras builds it
    tkio.save_weights(module, tmp_path / "ours.weights.h5")
    model = tf_keras.models.clone_model(tf_keras.models.load_model(tmp_path / "legacy.h5", compile=False))
    model.load_weights(str(tmp_path / "ours.weights.h5"))
    xs, _ = _inputs([(7,)], False, 50)
    assert_close_rel(model.predict(xs[0], verbose=0), _torch_outputs(module, xs, False)[0], 1e-4)


# ------------------------------------------------------------------------ format choice, sniffing
def test_format_by_name_and_explicit(tmp_path):
    module = nn.Sequential(nn.Linear(3, 2))
    tkio.save_weights(module, tmp_path / "a.weights.h5")
    tkio.save_weights(module, tmp_path / "a.h5")
    tkio.save_weights(module, tmp_path / "b.weights.h5", format="h5")  # legacy layout under a v3 name
    tkio.save_weights(module, tmp_path / "b.h5", format="keras")
    for name, v3 in (("a.weights.h5", True), ("a.h5", False), ("b.weights.h5", False), ("b.h5", True)):
        with h5py.File(tmp_path / name) as f:
            assert ("layer_names" not in f.attrs) == v3, name
        assert tkio.load_weights(nn.Sequential(nn.Linear(3, 2)), tmp_path / name).all_loaded
    tkio.save_model(module, tmp_path / "old.keras", input_shape=(3,), format="h5")  # what Keras <= 2.12 wrote
    assert h5py.is_hdf5(tmp_path / "old.keras")
    x = np.ones((2, 3), "float32")
    np.testing.assert_array_equal(tkio.load_model(tmp_path / "old.keras").predict(x), module(torch.ones(2, 3)).detach())
    tkio.save_model(module, tmp_path / "m.h5", input_shape=(3,), format="keras")
    assert zipfile.is_zipfile(tmp_path / "m.h5")
    np.testing.assert_array_equal(tkio.load_model(tmp_path / "m.h5").predict(x), module(torch.ones(2, 3)).detach())
    with pytest.raises(tkio.TorchKerasIOError, match="format"):
        tkio.save_weights(module, tmp_path / "c.h5", format="tf")


def test_sharded_weights_json_from_keras3(tmp_path):
    model = keras.Sequential([keras.Input((4,))] + [keras.layers.Dense(100) for _ in range(3)])
    model.save_weights(tmp_path / "m.weights.json", max_shard_size=0.00005)  # GB: a 40 KB kernel per shard
    assert len(list(tmp_path.glob("m_*.weights.h5"))) > 1
    module = nn.Sequential(nn.Linear(4, 100), nn.Linear(100, 100), nn.Linear(100, 100))
    assert tkio.load_weights(module, tmp_path / "m.weights.json").all_loaded
    np.testing.assert_array_equal(module[1].weight.detach().numpy().T, model.layers[1].kernel.numpy())


def test_keras3_shards_splitting_one_layer(tmp_path):
    """Keras 3 may put vars/0 of a layer in one shard and vars/1..3 in the next."""
    layers = keras.layers
    model = keras.Sequential([keras.Input((4,)), layers.Dense(100), layers.BatchNormalization(epsilon=1e-5),
                              layers.Dense(4)])  # fmt: skip
    model.layers[1].moving_variance.assign(np.linspace(0.5, 2.0, 100).astype("float32"))
    model.save_weights(tmp_path / "m.weights.json", max_shard_size=0.0000024)  # GB: splits the BatchNormalization
    index = json.loads((tmp_path / "m.weights.json").read_text())
    assert len(index["weight_map"]["/layers/batch_normalization/vars"]) == 2
    module = nn.Sequential(nn.Linear(4, 100), nn.BatchNorm1d(100), nn.Linear(100, 4)).eval()
    assert tkio.load_weights(module, tmp_path / "m.weights.json").all_loaded
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    assert_close_rel(module(torch.from_numpy(x)).detach(), model.predict(x, verbose=0), 1e-5)


def test_our_sharded_weights_load_in_keras3_and_back(tmp_path):
    torch.manual_seed(0)

    def make():
        return nn.Sequential(nn.Linear(4, 100), nn.BatchNorm1d(100), nn.Linear(100, 60), nn.Linear(60, 60),
                             nn.Linear(60, 3))  # fmt: skip

    module = make().eval()
    tkio.save_weights(module, tmp_path / "s.weights.json", max_shard_size=0.00003)  # GB: 32 KB shards
    index = json.loads((tmp_path / "s.weights.json").read_text())
    assert sorted(set(sum(index["weight_map"].values(), []))) == ["s_00000.weights.h5", "s_00001.weights.h5"]
    assert index["weight_map"]["/layers/dense_2/vars"] == ["s_00001.weights.h5"]
    layers = keras.layers
    model = keras.Sequential([keras.Input((4,)), layers.Dense(100), layers.BatchNormalization(epsilon=1e-5),
                              layers.Dense(60), layers.Dense(60), layers.Dense(3)])  # fmt: skip
    model.load_weights(tmp_path / "s.weights.json")
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    assert_close_rel(model.predict(x, verbose=0), module(torch.from_numpy(x)).detach(), 1e-5)
    back = make()
    assert tkio.load_weights(back, tmp_path / "s.weights.json").all_loaded
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), back.state_dict().values()))
    with pytest.raises(tkio.FileFormatError, match="more than max_shard_size"):
        tkio.save_weights(module, tmp_path / "t.weights.json", max_shard_size=0.00001)


# --------------------------------------------------------------------------------- optimizer state
def test_compiled_keras3_model_restores_adam(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"), keras.layers.Dense(1, name="d2")])
    model.compile(keras.optimizers.Adam(0.01), "mean_squared_error")
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(8, 4)).astype("float32"), rng.normal(size=(8, 1)).astype("float32"), verbose=0)
    model.save(tmp_path / "c.keras")
    ours = tkio.load_model(tmp_path / "c.keras")
    assert os.listdir(tmp_path) == ["c.keras"]  # nothing extracted or written beside it
    assert isinstance(ours.optimizer, torch.optim.Adam) and ours.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    kernel = ours.module.layers["d1"].weight
    state = ours.optimizer.state[kernel]
    assert int(state["step"]) == 1
    m = model.optimizer.variables[2].numpy()  # dense kernel momentum, Keras layout (in, out)
    np.testing.assert_allclose(state["exp_avg"].numpy().T, m, rtol=1e-6)


def test_our_keras_file_with_optimizer(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    module(torch.randn(5, 4)).pow(2).mean().backward()
    opt.step()
    tkio.save_model(module, tmp_path / "t.keras", optimizer=opt, loss="mean_squared_error", input_shape=(4,))
    k = keras.saving.load_model(tmp_path / "t.keras")
    assert type(k.optimizer).__name__ == "Adam" and int(k.optimizer.iterations.numpy()) == 1
    first = opt.param_groups[0]["params"][0]  # Keras's first slot: the first kernel's momentum, (in, out)
    np.testing.assert_array_equal(k.optimizer.variables[2].numpy(), opt.state[first]["exp_avg"].numpy().T)
    back = tkio.load_model(tmp_path / "t.keras")
    for p, q in zip(opt.param_groups[0]["params"], back.optimizer.param_groups[0]["params"]):
        for key, value in opt.state[p].items():
            assert torch.equal(value, back.optimizer.state[q][key]), key


def _keras3_family_models():
    """Every layer family with weights, in two Keras 3 models (one build each)."""
    layers = keras.layers
    img = keras.Input((8, 8, 4))
    x = layers.SeparableConv2D(4, 3)(img)
    x = layers.DepthwiseConv2D(3)(x)
    x = layers.Conv2DTranspose(2, 3)(x)
    x = layers.GroupNormalization(2)(x)
    x = layers.PReLU()(x)
    x = layers.Reshape((1, 6, 6, 2))(x)
    x = layers.ConvLSTM2D(2, 3)(x)
    x = layers.BatchNormalization()(layers.Flatten()(x))
    image_model = keras.Model(img, layers.Dense(3)(x))
    ids = keras.Input((6,), dtype="int32")
    y = layers.Embedding(20, 8)(ids)
    y = layers.Conv1D(8, 3, padding="same")(y)
    y = layers.Bidirectional(layers.LSTM(5, return_sequences=True))(y)
    y = layers.TimeDistributed(layers.Dense(4))(y)
    y = layers.MultiHeadAttention(2, 3)(y, y)
    y = layers.LayerNormalization()(y)
    y = layers.SimpleRNN(4, return_sequences=True)(y)
    text_model = keras.Model(ids, layers.Dense(2)(layers.GRU(3)(y)))
    rng = np.random.default_rng(0)
    for model in (image_model, text_model):
        for w in model.weights:  # non-trivial everything, BN statistics and PReLU slopes included
            w.assign(rng.uniform(0.2, 0.8, size=w.shape).astype("float32"))
    return [
        (image_model, rng.normal(size=(2, 8, 8, 4)).astype("float32"), 1e-4),
        (text_model, rng.integers(0, 20, size=(2, 6)).astype("int32"), 1e-4),
    ]


def test_every_family_both_ways_with_keras3(tmp_path):
    for i, (model, x, rtol) in enumerate(_keras3_family_models()):
        ref = model.predict(x, verbose=0)
        model.save(tmp_path / f"k{i}.keras")
        ours = tkio.load_model(tmp_path / f"k{i}.keras", compile=False)
        assert_close_rel(ours.predict(x), ref, rtol)
        # and back: our .keras and our .weights.h5 of the rebuilt model, into Keras 3
        tkio.save_model(ours, tmp_path / f"o{i}.keras")
        assert_close_rel(keras.saving.load_model(tmp_path / f"o{i}.keras").predict(x, verbose=0), ref, rtol)
        tkio.save_weights(ours.module, tmp_path / f"o{i}.weights.h5")
        fresh = keras.models.clone_model(model)
        fresh.load_weights(tmp_path / f"o{i}.weights.h5")
        assert_close_rel(fresh.predict(x, verbose=0), ref, rtol)
        # Keras 3's .weights.h5 into the rebuilt module
        model.save_weights(tmp_path / f"k{i}.weights.h5")
        again = tkio.load_model(tmp_path / f"o{i}.keras", compile=False)
        for p in again.module.parameters():
            torch.nn.init.zeros_(p)
        assert tkio.load_weights(again.module, tmp_path / f"k{i}.weights.h5").all_loaded
        assert_close_rel(again.predict(x), ref, rtol)


def test_nested_keras3_model_round_trips_through_our_loader(tmp_path):
    inner = keras.Sequential([keras.layers.Dense(5, name="inner_dense"), keras.layers.BatchNormalization(name="bn")],
                             name="inner_seq")  # fmt: skip
    inp = keras.Input((4,), name="inp")
    out = keras.layers.Dense(2, name="head")(inner(keras.layers.Dense(6, name="outer_dense")(inp)))
    model = keras.Model(inp, out, name="outer")
    rng = np.random.default_rng(0)
    for w in model.weights:  # non-trivial BN statistics
        w.assign(rng.uniform(0.5, 1.5, size=w.shape).astype("float32"))
    x = rng.normal(size=(3, 4)).astype("float32")
    ref = model.predict(x, verbose=0)
    model.save(tmp_path / "nested.keras")
    ours = tkio.load_model(tmp_path / "nested.keras", compile=False)
    assert_close_rel(ours.predict(x), ref, 1e-5)
    tkio.save_model(ours, tmp_path / "again.keras")
    with zipfile.ZipFile(tmp_path / "again.keras") as zf:
        (tmp_path / "again.weights.h5").write_bytes(zf.read("model.weights.h5"))
    with h5py.File(tmp_path / "again.weights.h5") as f:
        assert "layers/sequential/layers/batch_normalization/vars/3" in f
    assert_close_rel(keras.saving.load_model(tmp_path / "again.keras", compile=False).predict(x, verbose=0), ref, 1e-5)


def test_tf_keras_v3_files_load(tmp_path):
    tf_keras = keras_module("tf_keras")
    layers = tf_keras.layers
    model = tf_keras.Sequential([layers.InputLayer((5,)), layers.Dense(4, activation="relu", name="d1"),
                                 layers.BatchNormalization(name="bn"), layers.Dense(2, name="d2")])  # fmt: skip
    model.compile("adam", "mse", metrics=["mae"])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 5)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
    model.fit(x, y, verbose=0)
    ref = model.predict(x, verbose=0)
    model.save(str(tmp_path / "tfk.keras"))
    model.save_weights(str(tmp_path / "tfk.weights.h5"))
    assert zipfile.is_zipfile(tmp_path / "tfk.keras")
    assert_close_rel(tkio.load_model(tmp_path / "tfk.keras", compile=False).predict(x), ref, 1e-5)
    module = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.BatchNorm1d(4, eps=1e-3), nn.Linear(4, 2)).eval()
    assert tkio.load_weights(module, tmp_path / "tfk.weights.h5").all_loaded
    assert_close_rel(module(torch.from_numpy(x)).detach(), ref, 1e-5)


OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "RMSprop": lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "Adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
    "Adadelta": lambda p: torch.optim.Adadelta(p),
    "Adamax": lambda p: torch.optim.Adamax(p),
    "Nadam": lambda p: torch.optim.NAdam(p),
    "AdamW": lambda p: torch.optim.AdamW(p),
}


def test_keras3_takes_every_optimizers_state(tmp_path):
    """Keras 3 skips optimizer variables (with a warning) when their count is not its own."""
    for kname, make in OPTIMIZERS.items():
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1))
        opt = make(module.parameters())
        module(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        with warnings.catch_warnings():  # notes on where Keras's update rules differ from torch's
            warnings.simplefilter("ignore", tkio.TorchKerasIOWarning)
            tkio.save_model(module, tmp_path / "o.keras", optimizer=opt, loss="mean_squared_error", input_shape=(4,))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = keras.saving.load_model(tmp_path / "o.keras")
        assert type(model.optimizer).__name__ == kname
        assert not [w for w in caught if "Skipping variable loading" in str(w.message)], kname
        slot = model.optimizer.variables[2].numpy()
        assert slot.shape == (4, 3) and np.any(slot != 0), kname  # the first kernel's first slot, restored


# ------------------------------------------------------------------------------------ the corpus
def test_corpus_keras3_weights_file():
    path = os.path.join(CORPUS, "Exitarr__collaborative-filtering-based-Recommendation-System__best_model.weights.h5")
    if not os.path.isdir(CORPUS):
        pytest.skip("corpus absent")
    assert h5py.is_hdf5(path)

    class Recommender(nn.Module):
        def __init__(self):
            super().__init__()
            self.user, self.movie, self.genre = nn.Embedding(6041, 20), nn.Embedding(3953, 20), nn.Embedding(302, 20)
            self.d1, self.b1 = nn.Linear(60, 100), nn.BatchNorm1d(100, eps=1e-3)
            self.d2, self.b2 = nn.Linear(100, 50), nn.BatchNorm1d(50, eps=1e-3)
            self.d3, self.b3 = nn.Linear(50, 20), nn.BatchNorm1d(20, eps=1e-3)
            self.out = nn.Linear(20, 1)

    module = Recommender()
    report = tkio.load_weights(module, path)
    assert report.all_loaded and len(report.loaded) == 10
    with h5py.File(path) as f:
        np.testing.assert_array_equal(module.movie.weight.detach().numpy(), f["layers/embedding_1/vars/0"][()])
        np.testing.assert_array_equal(module.d2.weight.detach().numpy().T, f["layers/dense_1/vars/0"][()])
        np.testing.assert_array_equal(module.b3.running_var.numpy(), f["layers/batch_normalization_2/vars/3"][()])
    by_name = tkio.load_weights(Recommender(), path, by_name=True,
                                layer_names={"user": "user_embedding", "genre": "genre_embedding"})  # fmt: skip
    assert by_name.loaded == ["user_embedding", "genre_embedding"]


# ---------------------------------------------------------------------------------- hostile input
def _zip(path, members: dict, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def good_members(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "m.keras"
    tkio.save_model(nn.Sequential(nn.Linear(3, 2)), path, input_shape=(3,))
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


@pytest.mark.parametrize(
    "case, match",
    [
        ("traversal", "unsafe member name '../evil.h5'"),
        ("absolute", "unsafe member name '/etc/x'"),
        ("no_config", "no 'config.json' member"),
        ("no_weights", "no 'model.weights.h5' member"),
        ("bad_json", "member 'config.json' is not valid JSON"),
        ("json_list", "member 'config.json' is not a JSON object"),
        ("bad_config", "layer 'config.json': model config"),
        ("weights_not_h5", "member 'model.weights.h5' is not a readable HDF5"),
        ("not_zip", "not a readable ZIP"),
    ],
)
def test_hostile_archives_raise_file_format_errors(tmp_path, good_members, case, match):
    members = dict(good_members)
    if case == "traversal":
        members["../evil.h5"] = b"x"
    elif case == "absolute":
        members["/etc/x"] = b"x"
    elif case == "no_config":
        del members["config.json"]
    elif case == "no_weights":
        del members["model.weights.h5"]
    elif case == "bad_json":
        members["config.json"] = b"{not json"
    elif case == "json_list":
        members["config.json"] = b"[1, 2]"
    elif case == "bad_config":
        members["config.json"] = b'{"class_name": "Functional", "config": 5}'
    elif case == "weights_not_h5":
        members["model.weights.h5"] = b"\x89HDF\r\n\x1a\n garbage"
    path = tmp_path / "bad.keras"
    if case == "not_zip":
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    else:
        _zip(path, members)
    before = set(os.listdir(tmp_path))
    with pytest.raises(tkio.FileFormatError, match=match) as info:
        tkio.load_model(path)
    assert str(path) in str(info.value)
    assert set(os.listdir(tmp_path)) == before  # nothing extracted
    if case not in ("no_config", "bad_json", "json_list", "bad_config"):
        with pytest.raises(tkio.FileFormatError):
            tkio.load_weights(nn.Sequential(nn.Linear(3, 2)), path)


def _claim_size(path, name: str, size: int) -> None:
    """Make the central directory of a ZIP say that member ``name`` (the last) expands to ``size``
    bytes, in a ZIP64 extra field, without writing those bytes."""
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    while data[at + 46 : at + 46 + struct.unpack_from("<H", data, at + 28)[0]] != name.encode():
        at = data.find(b"PK\x01\x02", at + 4)
    n, m = struct.unpack_from("<HH", data, at + 28)
    struct.pack_into("<I", data, at + 24, 0xFFFFFFFF)  # uncompressed size: in the ZIP64 field
    struct.pack_into("<H", data, at + 30, m + 12)
    data[at + 46 + n + m : at + 46 + n + m] = struct.pack("<HHQ", 1, 8, size)
    end = data.rfind(b"PK\x05\x06")  # the central directory grew by 12 bytes
    struct.pack_into("<I", data, end + 12, struct.unpack_from("<I", data, end + 12)[0] + 12)
    path.write_bytes(bytes(data))


def test_zip_bomb_is_refused_before_reading(tmp_path, good_members):
    members = dict(good_members)
    members["assets/blob"] = b"\x00" * (4 << 20)  # compresses about 1000x
    path = _zip(tmp_path / "bomb.keras", members, zipfile.ZIP_DEFLATED)
    _claim_size(path, "assets/blob", 5 << 30)  # past Keras's 4 GiB threshold, from 4 KB compressed
    with pytest.raises(tkio.FileFormatError, match="member 'assets/blob' expands to"):
        tkio.load_model(path)


def test_bad_var_numbering_in_weights_h5(tmp_path):
    with h5py.File(tmp_path / "x.weights.h5", "w") as f:
        f.create_group("vars")
        f["layers/dense/vars/0"] = np.zeros((3, 2), "float32")
        f["layers/dense/vars/5"] = np.zeros((2,), "float32")
    with pytest.raises(tkio.FileFormatError, match="not numbered") as info:
        tkio.load_weights(nn.Linear(3, 2), tmp_path / "x.weights.h5")
    assert "layers/dense" in str(info.value)


def test_links_in_weights_h5_are_refused(tmp_path):
    with h5py.File(tmp_path / "x.weights.h5", "w") as f:
        f["elsewhere"] = np.zeros((3, 2), "float32")
        f.create_group("vars")
        f["layers/dense/vars/0"] = h5py.SoftLink("/elsewhere")
    with pytest.raises(tkio.FileFormatError, match="SoftLink; only hard links") as info:
        tkio.load_weights(nn.Linear(3, 2), tmp_path / "x.weights.h5")
    assert info.value.layer == "layers/dense" and str(tmp_path) in str(info.value)


def test_sharded_index_cannot_point_outside_its_folder(tmp_path):
    index = {"metadata": {"total_size": 8.0}, "weight_map": {"/layers/dense/vars": ["../outside.weights.h5"]}}
    (tmp_path / "m.weights.json").write_text(json.dumps(index))
    with pytest.raises(tkio.FileFormatError, match="unsafe shard name '../outside.weights.h5'") as info:
        tkio.load_weights(nn.Linear(3, 2), tmp_path / "m.weights.json")
    assert info.value.layer == "/layers/dense/vars"


def test_keras_2_13_layer_checkpoint_dependencies_layout(tmp_path):
    """Keras 2.13-2.14 saved layers under ``_layer_checkpoint_dependencies``; Keras 3 reads them as ``layers``."""
    layer = nn.Linear(3, 2)
    with h5py.File(tmp_path / "old.weights.h5", "w") as f:
        f.create_group("vars")
        f["_layer_checkpoint_dependencies/dense/vars/0"] = layer.weight.detach().numpy().T
        f["_layer_checkpoint_dependencies/dense/vars/1"] = layer.bias.detach().numpy()
        f["metrics/mean/vars/0"] = np.float32(3.0)  # compiled metric state: not a layer
    target = nn.Linear(3, 2)
    assert tkio.load_weights(target, tmp_path / "old.weights.h5").all_loaded
    assert torch.equal(target.weight, layer.weight) and torch.equal(target.bias, layer.bias)


def test_overwrite_false_keeps_the_archive(tmp_path):
    module = nn.Sequential(nn.Linear(3, 2))
    tkio.save_model(module, tmp_path / "m.keras", input_shape=(3,))
    before = (tmp_path / "m.keras").read_bytes()
    with pytest.raises(FileExistsError):
        tkio.save_model(nn.Sequential(nn.Linear(3, 2)), tmp_path / "m.keras", input_shape=(3,), overwrite=False)
    assert (tmp_path / "m.keras").read_bytes() == before and os.listdir(tmp_path) == ["m.keras"]
