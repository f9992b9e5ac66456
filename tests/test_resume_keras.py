"""Training resumed from Keras files (Keras 2.0.x name-sorted slots, LSTM / GRU) follows Keras's own next steps, both ways."""

from __future__ import annotations

import json
import os
import warnings

import h5py
import numpy as np
import pytest
import torch
from conftest import ORACLE_WARNINGS, assert_close_rel, keras_module
from torch import nn

import torchkeras_io as tkio
from torchkeras_io._layers.recurrent.modules import KerasRecurrent
from torchkeras_io.errors import TorchKerasIOWarning

pytestmark = [*ORACLE_WARNINGS, pytest.mark.filterwarnings("ignore::UserWarning")]

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "corpus", "files")
B = 8


def _load(path, custom_objects=None) -> tuple:
    """load_model(compile=True) and the library's warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = tkio.load_model(path, custom_objects=custom_objects)
    return model, [str(w.message) for w in caught if issubclass(w.category, TorchKerasIOWarning)]


def _problems(notes: list) -> list:
    """Warnings that say optimizer state was lost or placed by a fallback."""
    bad = (
        "state not restored",
        "could not be restored",
        "no Keras variable",
        "state is dropped",
        "slots are in",
        "follow no known",
    )
    return [n for n in notes if any(b in n for b in bad)]


def _continue(kmodel, model, batches, tmp_path, rtol) -> list:
    """The same batches through Keras's ``train_on_batch`` and our ``fit``: losses step by step,
    then every weight (our model written back into a clone of the Keras model) against Keras's."""
    model.train()
    losses = []
    for x, y in batches:
        expected = float(kmodel.train_on_batch(x, y))
        got = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False).history["loss"][0]
        losses.append((got, expected))
        assert abs(got - expected) <= rtol * abs(expected), losses
    path = tmp_path / "resumed.weights.h5" if kmodel.__module__.startswith("keras.") else tmp_path / "resumed.h5"
    model.save_weights(path)
    keras = keras_module("keras3" if str(path).endswith(".weights.h5") else "tf_keras")
    clone = keras.models.clone_model(kmodel)
    clone.load_weights(path)
    for ours, theirs in zip(clone.get_weights(), kmodel.get_weights()):
        assert_close_rel(ours, theirs, rtol)
    return losses


# ----------------------------------------------------------------------- Keras 2.0.x slot order
def _names(attr) -> list:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in attr]


def _as_keras_205(path, kmodel, version: str = "2.0.5", layer_order: bool = False) -> list:
    """Rewrite a tf-keras optimizer_v2 Adam / RMSprop file as Keras 2.0.5 wrote it: version
    attributes, the 2.0-era optimizer config, and ``optimizer_weights``: Adam's ``iterations:0``
    (a float) then its ``m`` and ``v`` slots, RMSprop's accumulators alone, as unnamed
    ``Variable_i:0`` in the order 2.0.5 collected the trainable weights: sorted by their names
    (``layer_order``: as 2.0.6+ did). Returns that order."""
    with h5py.File(path, "r+") as f:
        og = f["optimizer_weights"]
        names = _names(og.attrs["weight_names"])
        values = {n: og[n][()] for n in names}
        del f["optimizer_weights"]
        for g in (f, f["model_weights"]):
            g.attrs["keras_version"] = version.encode()
            g.attrs["backend"] = b"tensorflow"
        cfg = kmodel.optimizer.get_config()
        kname = type(kmodel.optimizer).__name__
        keys = ("beta_1", "beta_2", "epsilon") if kname == "Adam" else ("rho", "epsilon")
        config = dict({k: float(cfg[k]) for k in keys}, lr=float(cfg["learning_rate"]), decay=0.0)
        f.attrs["training_config"] = json.dumps({
            "optimizer_config": {"class_name": kname, "config": config}, "loss": kmodel.loss, "metrics": [],
            "sample_weight_mode": None, "loss_weights": None}).encode()  # fmt: skip
        # Keras 2.0 named a recurrent layer's weights "lstm_1/kernel:0" (tf-keras: ".../lstm_cell/...")
        for layer in _names(f["model_weights"].attrs["layer_names"]):
            g = f["model_weights"][layer]
            old = _names(g.attrs["weight_names"])
            new = [n.replace("/lstm_cell/", "/") for n in old]
            for a, b in zip(old, new):
                if a != b:
                    g.move(a, b)
            g.attrs["weight_names"] = [n.encode() for n in new]
        var = {v.name.replace("/lstm_cell/", "/"): v.name for v in kmodel.trainable_weights}
        collected = list(var)
        if not layer_order:
            collected.sort()  # Keras 2.0.5 compile(): "sort them deterministically", by name
        kinds = ("m", "v") if kname == "Adam" else ("rms",)
        slots = [values[f"{kname}/{var[n].removesuffix(':0')}/{s}:0"] for s in kinds for n in collected]
        if kname == "Adam":  # Keras 2.0 RMSprop saved no iteration counter
            slots.insert(0, np.float32(values["Adam/iter:0"]))
        og = f.create_group("optimizer_weights")
        out = [f"Variable{'' if i == 0 else f'_{i}'}:0" for i in range(len(collected) * len(kinds))]
        out = ["iterations:0"] + out if kname == "Adam" else out
        og.attrs["weight_names"] = [n.encode() for n in out]
        for n, v in zip(out, slots):
            og.create_dataset(n, data=v)
    return collected


# Keras adds Adam's epsilon to sqrt(v), torch to sqrt(v / (1 - beta_2^t)): a documented drift
# (optimizers.md §3.2; load_model warns) of ~1e-4 rel after 4 steps at epsilon=1e-7 where
# sqrt(v) is small. A negligible epsilon leaves what these tests measure, the state mapping
# (measured then: <= 1.4e-6 rel after 4 steps); a misplaced slot moves a weight by ~lr a step.
EPS = 1e-12
ADAM_20 = {"learning_rate": 1e-2, "epsilon": EPS}  # Keras 2.0's Adam arithmetic: optimizer_v2's


def _xception_like(K):
    L = K.layers
    inp = L.Input((8, 8, 2), name="input_1")
    x = L.Conv2D(8, 3, use_bias=False, name="conv2d_1")(inp)
    x = L.BatchNormalization(name="batch_normalization_1")(x)
    x = L.Activation("relu", name="activation_1")(x)
    x = L.SeparableConv2D(8, 3, padding="same", use_bias=False, name="separable_conv2d_1")(x)
    x = L.BatchNormalization(name="batch_normalization_2")(x)
    x = L.GlobalAveragePooling2D(name="global_average_pooling2d_1")(x)
    model = K.Model(inp, L.Dense(3, name="dense_1")(x))
    rng = np.random.default_rng(3)  # non-trivial weights; the 1-d ones (BN, bias) around 1: variances > 0
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") + (w.ndim == 1)
                       for w in model.get_weights()])  # fmt: skip
    return model


def _image_batches(first, n):
    out = []
    for i in range(first, first + n):
        rng = np.random.default_rng(500 + i)
        out.append((rng.normal(size=(B, 8, 8, 2)).astype("float32"), rng.normal(size=(B, 3)).astype("float32")))
    return out


def test_keras_205_name_sorted_slots_resume(tmp_path):
    """Keras <= 2.0.5 passed the optimizer its weights sorted by name (BN beta before gamma before
    the conv kernel): the slots are mapped that way and training continues as Keras continues it."""
    K = keras_module("tf_keras")
    kmodel = _xception_like(K)
    kmodel.compile(K.optimizers.legacy.Adam(**ADAM_20), "mse", run_eagerly=True)
    for x, y in _image_batches(0, 3):
        kmodel.train_on_batch(x, y)
    path = tmp_path / "k205.h5"
    kmodel.save(path)
    collected = _as_keras_205(path, kmodel)
    assert collected[:3] == ["batch_normalization_1/beta:0", "batch_normalization_1/gamma:0",
                             "batch_normalization_2/beta:0"]  # fmt: skip
    model, notes = _load(path)
    assert not _problems(notes), notes
    opt = model.optimizer
    assert isinstance(opt, torch.optim.Adam)
    assert [float(st["step"]) for st in opt.state.values()] == [3.0] * len(collected)
    # the same-shaped (8,) gamma / beta slots went where Keras 2.0.5 had them
    bn = next(m for m in model.module.modules() if isinstance(m, nn.BatchNorm2d))
    with h5py.File(path, "r") as f:
        m_beta = f["optimizer_weights"]["Variable:0"][()]  # sorted first: batch_normalization_1/beta
        m_gamma = f["optimizer_weights"]["Variable_1:0"][()]
    np.testing.assert_array_equal(opt.state[bn.bias]["exp_avg"].numpy(), m_beta)
    np.testing.assert_array_equal(opt.state[bn.weight]["exp_avg"].numpy(), m_gamma)
    _continue(kmodel, model, _image_batches(3, 3), tmp_path, 1e-5)


def _text_generator(K):
    """Keras 2.0's text-generation example: LSTM over one-hot characters, softmax, RMSprop. The
    features equal the units, so kernel and recurrent_kernel (and their slots) share a shape."""
    L = K.layers
    inp = L.Input((6, 5), name="input_1")
    x = L.LSTM(5, name="lstm_1")(inp)
    model = K.Model(inp, L.Activation("softmax", name="activation_1")(L.Dense(5, name="dense_1")(x)))
    rng = np.random.default_rng(4)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in model.get_weights()])
    model.compile(K.optimizers.legacy.RMSprop(1e-2, epsilon=EPS), "categorical_crossentropy", run_eagerly=True)
    return model


def _text_batches(first, n):
    out = []
    for i in range(first, first + n):
        rng = np.random.default_rng(700 + i)
        x = np.eye(5, dtype="float32")[rng.integers(0, 5, (B, 6))]
        out.append((x, np.eye(5, dtype="float32")[rng.integers(0, 5, B)]))
    return out


def test_keras_205_text_generator_resumes(tmp_path):
    """An LSTM text generator as Keras 2.0.5 saved it (RMSprop accumulators sorted by name:
    dense_1 before lstm_1, bias before kernel before recurrent_kernel)."""
    K = keras_module("tf_keras")
    kmodel = _text_generator(K)
    for x, y in _text_batches(0, 3):
        kmodel.train_on_batch(x, y)
    path = tmp_path / "textgen.h5"
    kmodel.save(path)
    collected = _as_keras_205(path, kmodel)
    assert collected == ["dense_1/bias:0", "dense_1/kernel:0", "lstm_1/bias:0", "lstm_1/kernel:0",
                         "lstm_1/recurrent_kernel:0"]  # fmt: skip
    model, notes = _load(path)
    assert not _problems(notes), notes
    assert isinstance(model.optimizer, torch.optim.RMSprop) and len(model.optimizer.state) == 5
    rnn = next(m for m in model.module.modules() if isinstance(m, KerasRecurrent)).rnn
    with h5py.File(path, "r") as f:  # same-shaped (5, 20) slots: kernel is Variable_3, recurrent Variable_4
        kernel, recurrent = f["optimizer_weights"]["Variable_3:0"][()], f["optimizer_weights"]["Variable_4:0"][()]
    state = model.optimizer.state
    np.testing.assert_array_equal(state[rnn.weight_ih_l0]["square_avg"].numpy().T, kernel)
    np.testing.assert_array_equal(state[rnn.weight_hh_l0]["square_avg"].numpy().T, recurrent)
    _continue(kmodel, model, _text_batches(3, 3), tmp_path, 1e-5)


def test_layer_order_file_still_resumes(tmp_path):
    """Keras >= 2.0.6 used layer order: the same file with its slots in layer order and version
    2.0.8 restores in that order; a 2.0.5 file whose slots contradict the sorted order falls back
    to the order its shapes fit, and says so."""
    K = keras_module("tf_keras")
    kmodel = _xception_like(K)
    kmodel.compile(K.optimizers.legacy.Adam(**ADAM_20), "mse", run_eagerly=True)
    for x, y in _image_batches(0, 2):
        kmodel.train_on_batch(x, y)
    path = tmp_path / "layers.h5"
    kmodel.save(path)
    layer = _as_keras_205(path, kmodel, "2.0.8", layer_order=True)
    model, notes = _load(path)
    assert not _problems(notes), notes
    bn = next(m for m in model.module.modules() if isinstance(m, nn.BatchNorm2d))
    with h5py.File(path, "r") as f:
        gamma_m = f["optimizer_weights"][f"Variable_{layer.index('batch_normalization_1/gamma:0')}:0"][()]
    np.testing.assert_array_equal(model.optimizer.state[bn.weight]["exp_avg"].numpy(), gamma_m)
    _continue(kmodel, model, _image_batches(2, 2), tmp_path, 1e-5)
    # the same layer-order slots claimed by a 2.0.5 file: sorted order contradicts their shapes
    with h5py.File(path, "r+") as f:
        f.attrs["keras_version"] = f["model_weights"].attrs["keras_version"] = b"2.0.5"
    model, notes = _load(path)
    assert [x for x in notes if "slots are in layer order" in x and "shapes fit" in x], notes
    bn = next(m for m in model.module.modules() if isinstance(m, nn.BatchNorm2d))
    np.testing.assert_array_equal(model.optimizer.state[bn.weight]["exp_avg"].numpy(), gamma_m)


def test_unplaceable_slots_warn_loudly(tmp_path):
    """Slots that fit no order of the model's weights are not restored, and load_model says so."""
    K = keras_module("tf_keras")
    kmodel = _xception_like(K)
    kmodel.compile(K.optimizers.legacy.Adam(**ADAM_20), "mse", run_eagerly=True)
    kmodel.train_on_batch(*_image_batches(0, 1)[0])
    path = tmp_path / "bad.h5"
    kmodel.save(path)
    _as_keras_205(path, kmodel)
    with h5py.File(path, "r+") as f:  # swap two differently shaped slots
        og = f["optimizer_weights"]
        a, b = og["Variable:0"][()], og["Variable_4:0"][()]
        del og["Variable:0"], og["Variable_4:0"]
        og["Variable:0"], og["Variable_4:0"] = b, a
    with pytest.warns(TorchKerasIOWarning, match="optimizer state not restored"):
        model = tkio.load_model(path)
    assert isinstance(model.optimizer, torch.optim.Adam) and not model.optimizer.state


def test_corpus_keras2_files_restore():
    """Real Keras 1.x / 2.0.x files with optimizer state restore it (name-sorted and layer order)."""
    files = {
        "Kulbear__deep-learning-coursera__Sequence_Models_models_model_shakespeare_kiank_350_epoch.h5": 8,  # 2.0.6
        "nanoporetech__medaka__medaka_test_data_test_model.hdf5": 14,  # 2.0.8, RMSprop, GRU(reset_after=False)
        "ottonello__P3-behavioral-cloning__model.h5": 16,  # 1.2.0, sorted by name
    }
    if not os.path.isdir(CORPUS):
        pytest.skip("../shared/corpus is absent")
    for name, count in files.items():
        # its Lambda (an input normalisation) holds no weights: any module stands in for it
        model, notes = _load(os.path.join(CORPUS, name), {"lambda_1": lambda cfg: nn.Identity()})
        assert not _problems(notes), (name, notes)
        assert len(model.optimizer.state) == count, name
        with h5py.File(os.path.join(CORPUS, name), "r") as f:
            og = f["optimizer_weights"]
            first = og[_names(og.attrs["weight_names"])[-1]][()]  # the last slot: the last variable's
        last = list(model.optimizer.state.values())[-1]
        value = last.get("exp_avg_sq", last.get("square_avg"))
        np.testing.assert_array_equal(value.numpy().T if value.dim() == 2 else value.numpy(), first)


# -------------------------------------------------------------------------------- LSTM / GRU
T, F, U = 6, 3, 5

RECURRENT = {
    "lstm": lambda L: L.LSTM(U, name="rnn"),
    "gru_reset_after": lambda L: L.GRU(U, reset_after=True, name="rnn"),
    "gru_reset_before": lambda L: L.GRU(U, reset_after=False, name="rnn"),
    "bidirectional_lstm": lambda L: L.Bidirectional(L.LSTM(U, return_sequences=True), name="rnn"),
}


def _sequence_batches(first, n):
    out = []
    for i in range(first, first + n):
        rng = np.random.default_rng(900 + i)
        out.append((rng.normal(size=(B, T, F)).astype("float32"), rng.normal(size=(B, 2)).astype("float32")))
    return out


def _recurrent_model(K, layer):
    L = K.layers
    inp = L.Input((T, F))
    x = layer(L)(inp)
    if len(x.shape) == 3:
        x = L.GlobalAveragePooling1D()(x)
    model = K.Model(inp, L.Dense(2, name="head")(x))
    rng = np.random.default_rng(11)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32") for w in model.get_weights()])
    return model


@pytest.mark.parametrize("case", list(RECURRENT))
def test_recurrent_resume_follows_tf_keras(tmp_path, case):
    """A tf-keras LSTM / GRU trained with Adam, saved, continued in torch: Keras's next steps."""
    K = keras_module("tf_keras")
    kmodel = _recurrent_model(K, RECURRENT[case])
    kmodel.compile(K.optimizers.Adam(1e-2, epsilon=EPS), "mse", run_eagerly=True)
    for x, y in _sequence_batches(0, 3):
        kmodel.train_on_batch(x, y)
    path = tmp_path / f"{case}.h5"
    kmodel.save(path)
    model, notes = _load(path)
    assert not _problems(notes), notes
    # exactly Keras's variables are trainable, each with Keras's slots and step
    n_keras = sum(int(np.prod(v.shape)) for v in kmodel.trainable_weights)
    assert sum(p.numel() for p in model.module.parameters()) == n_keras
    assert sum(p.numel() for st in model.optimizer.state.values() for p in [st["exp_avg"]]) == n_keras
    assert {float(st["step"]) for st in model.optimizer.state.values()} == {3.0}
    rnn = next(m for m in model.module.modules() if isinstance(m, KerasRecurrent)).rnn
    assert len(model.optimizer.state) == len(list(model.module.parameters()))
    if case != "gru_reset_after":  # one bias per gate, as Keras: torch's second bias is a zero buffer
        assert "bias_hh_l0" not in dict(rnn.named_parameters()) and not rnn.bias_hh_l0.any()
    losses = _continue(kmodel, model, _sequence_batches(3, 4), tmp_path, 1e-5)
    print(f"{case}: losses (ours, tf-keras) {[(round(a, 6), round(b, 6)) for a, b in losses]}")


def test_keras3_lstm_resume_follows_keras(tmp_path):
    """The same for a Keras 3 LSTM saved as .keras."""
    keras = keras_module("keras3")
    kmodel = _recurrent_model(keras, RECURRENT["lstm"])
    kmodel.compile(keras.optimizers.Adam(1e-2, epsilon=EPS), "mse", run_eagerly=True)
    for x, y in _sequence_batches(0, 3):
        kmodel.train_on_batch(x, y)
    path = tmp_path / "lstm.keras"
    kmodel.save(path)
    model, notes = _load(path)
    assert not _problems(notes), notes
    assert {float(st["step"]) for st in model.optimizer.state.values()} == {3.0}
    _continue(kmodel, model, _sequence_batches(3, 4), tmp_path, 1e-5)


def test_keras_built_recurrent_module_is_plain_torch(tmp_path):
    """The single-bias module is still torch's: state_dict, .to(), deepcopy and our own round trip."""
    K = keras_module("tf_keras")
    kmodel = _recurrent_model(K, RECURRENT["lstm"])
    path = tmp_path / "lstm.h5"
    kmodel.save(path)
    model = tkio.load_model(path, compile=False)
    rnn = next(m for m in model.module.modules() if isinstance(m, KerasRecurrent)).rnn
    assert type(rnn) is nn.LSTM
    assert set(rnn.state_dict()) == {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0"}
    x = _sequence_batches(0, 1)[0][0]
    expected = kmodel.predict(x, verbose=0)
    assert_close_rel(model.predict(x), expected, 1e-5)
    double = model.module.to(torch.float64)
    assert rnn.bias_hh_l0.dtype == torch.float64
    assert_close_rel(double(torch.from_numpy(x).double()), expected, 1e-5)
    model.module.float()
    model.save(tmp_path / "again.h5")
    again = tkio.load_model(tmp_path / "again.h5", compile=False)
    for a, b in zip(model.module.state_dict().values(), again.module.state_dict().values()):
        assert torch.equal(a, b)


def test_torch_gru_resume_through_our_file(tmp_path):
    """A torch nn.GRU's optimizer state (its (2, 3u) Keras bias is both torch biases) survives our
    file exactly, and tf-keras resumes from the same file as torch continues."""
    K = keras_module("tf_keras")

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(F, U, batch_first=True)
            self.head = nn.Linear(U, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    def step(module, opt, x, y):
        opt.zero_grad()
        nn.functional.mse_loss(module(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()

    torch.manual_seed(0)
    module = Net()
    opt = torch.optim.Adam(module.parameters(), lr=1e-2, eps=EPS)
    for x, y in _sequence_batches(0, 3):
        step(module, opt, x, y)
    path = tmp_path / "gru_torch.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Adam's epsilon placement note
        tkio.save_model(module, path, optimizer=opt, loss="mse", input_shape=(T, F))
    model, notes = _load(path)
    assert not _problems(notes), notes
    assert len(model.optimizer.state) == len(list(module.parameters())) == 6
    kmodel = K.models.load_model(path)
    model.train()
    for x, y in _sequence_batches(3, 3):
        step(module, opt, x, y)
        step(model.module, model.optimizer, x, y)
        kmodel.train_on_batch(x, y)
    for a, b in zip(module.parameters(), model.module.parameters()):
        assert torch.equal(a, b)
    x = _sequence_batches(9, 1)[0][0]
    assert_close_rel(kmodel.predict(x, verbose=0), module(torch.from_numpy(x)), 1e-5)


@pytest.mark.slow
def test_keras_built_recurrent_module_compiles(tmp_path):
    """torch.compile traces the single-bias module; gradients reach exactly Keras's variables."""
    K = keras_module("tf_keras")
    kmodel = _recurrent_model(K, RECURRENT["gru_reset_before"])
    kmodel.save(tmp_path / "gru.h5")
    model = tkio.load_model(tmp_path / "gru.h5", compile=False)
    x = _sequence_batches(0, 1)[0][0]
    out = torch.compile(model.module, backend="aot_eager")(torch.from_numpy(x))
    assert_close_rel(out, kmodel.predict(x, verbose=0), 1e-5)
    out.sum().backward()
    rnn = next(m for m in model.module.modules() if isinstance(m, KerasRecurrent)).rnn
    assert all(p.grad is not None for p in model.module.parameters()) and rnn.bias_hh_l0.grad is None


# recurrent corpus files (tf.keras 2.x / Keras 3): (file, trainable parameters = restored states)
CORPUS_RECURRENT = {
    "15louafi__EnglishToKatakanaSeq2Seq__model.h5": 10,  # 2.2.4, two LSTMs
    "anushree1001__Comparing-Multiple-Pre-trained-Neural-network-models-on-IMDB-dataset__bigru_model.h5": 9,
    "pjunes__MLD_lstm_autoencoder__lstm_autoencoder.h5": 14,  # 2.10
    "Rishi-11-2__Action_Recognition__LRCN_model.h5": 13,  # 2.11, TimeDistributed CNN + LSTM
    "tedvkieu__Core-VSL-Detect__bilstm_model.h5": 10,  # Keras 3.9
    "MarioStacksnQueues__US-Collisions-2016-2023-Forecasting-Collision-Trends__gru_model.h5": 12,  # Keras 3.10
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CORPUS_RECURRENT))
def test_corpus_recurrent_files_restore_every_slot(name):
    """Real LSTM / GRU files: every trainable parameter gets Keras's state, nothing is dropped."""
    if not os.path.isdir(CORPUS):
        pytest.skip("../shared/corpus is absent")
    model, notes = _load(os.path.join(CORPUS, name))
    assert not _problems(notes), notes
    assert len(model.optimizer.state) == len(list(model.module.parameters())) == CORPUS_RECURRENT[name]
