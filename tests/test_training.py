"""Keras-style training on tkio.Model: losses, metrics, compile / fit / evaluate / summary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_close_rel
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import torchkeras_io as tkio
from torchkeras_io import losses, metrics

tf_keras = pytest.importorskip("tf_keras")

B, C = 16, 5


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    f32 = np.float32
    return {
        "probs": rng.dirichlet(np.ones(C), size=B).astype(f32),
        "probs2": rng.dirichlet(np.ones(C), size=B).astype(f32),
        "logits": (3 * rng.normal(size=(B, C))).astype(f32),
        "onehot": np.eye(C, dtype=f32)[rng.integers(0, C, B)],
        "labels": rng.integers(0, C, B),
        "reg_p": rng.normal(size=(B, C)).astype(f32),
        "reg_t": rng.normal(size=(B, C)).astype(f32),
        "pos_p": rng.uniform(0.1, 3, size=(B, C)).astype(f32),
        "pos_t": rng.uniform(0.1, 3, size=(B, C)).astype(f32),
        "bin_t": rng.integers(0, 2, size=(B, C)).astype(f32),
        "sig": rng.uniform(0, 1, size=(B, C)).astype(f32),
    }


LOSS_CASES = [
    # (our name, tf_keras class, kwargs, y_pred key, y_true key)
    ("mse", "MeanSquaredError", {}, "reg_p", "reg_t"),
    ("mean_squared_error", "MeanSquaredError", {}, "reg_p", "reg_t"),
    ("mae", "MeanAbsoluteError", {}, "reg_p", "reg_t"),
    ("mape", "MeanAbsolutePercentageError", {}, "reg_p", "reg_t"),
    ("msle", "MeanSquaredLogarithmicError", {}, "pos_p", "pos_t"),
    ("huber", "Huber", {}, "logits", "reg_t"),
    ("binary_crossentropy", "BinaryCrossentropy", {}, "sig", "bin_t"),
    ("binary_crossentropy", "BinaryCrossentropy", {"from_logits": True}, "logits", "bin_t"),
    ("categorical_crossentropy", "CategoricalCrossentropy", {}, "probs", "onehot"),
    ("categorical_crossentropy", "CategoricalCrossentropy", {"from_logits": True}, "logits", "onehot"),
    ("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy", {}, "probs", "labels"),
    ("sparse_categorical_crossentropy", "SparseCategoricalCrossentropy", {"from_logits": True}, "logits", "labels"),
    ("kl_divergence", "KLDivergence", {}, "probs", "probs2"),
    ("poisson", "Poisson", {}, "pos_p", "pos_t"),
    ("hinge", "Hinge", {}, "reg_p", "bin_t"),
    ("cosine_similarity", "CosineSimilarity", {}, "reg_p", "reg_t"),
]


@pytest.mark.parametrize("name,cls,kwargs,p,t", LOSS_CASES)
def test_losses_match_tf_keras(data, name, cls, kwargs, p, t):
    ref = getattr(tf_keras.losses, cls)(**kwargs)(data[t], data[p]).numpy()
    ours = losses.get(name, **kwargs)(torch.from_numpy(data[p]), torch.as_tensor(data[t]))
    assert ours.dim() == 0
    assert_close_rel(ours, ref, 1e-6)


def test_losses_extra_axes_and_probabilities_clipped():
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(4), size=(3, 6)).astype(np.float32)
    p[0, 0] = [1.0, 0.0, 0.0, 0.0]  # exercises the epsilon clipping
    y = rng.integers(0, 4, size=(3, 6))
    ref = tf_keras.losses.SparseCategoricalCrossentropy()(y, p).numpy()
    assert_close_rel(losses.get("sparse_categorical_crossentropy")(torch.from_numpy(p), torch.from_numpy(y)), ref, 1e-6)
    t = rng.normal(size=(3, 6, 4)).astype(np.float32)
    assert_close_rel(losses.get("mse")(torch.from_numpy(p), torch.from_numpy(t)),
                     tf_keras.losses.MeanSquaredError()(t, p).numpy(), 1e-6)  # fmt: skip


def test_unknown_loss_and_bad_from_logits():
    with pytest.raises(tkio.TorchKerasIOError):
        losses.get("nope")
    with pytest.raises(tkio.TorchKerasIOError):
        losses.get("mse", from_logits=True)
    fn = nn.MSELoss()
    assert losses.get(fn) is fn


METRIC_CASES = [
    ("binary_accuracy", "BinaryAccuracy", "sig", "bin_t"),
    ("categorical_accuracy", "CategoricalAccuracy", "probs", "onehot"),
    ("sparse_categorical_accuracy", "SparseCategoricalAccuracy", "probs", "labels"),
    ("top_k_categorical_accuracy", "TopKCategoricalAccuracy", "probs", "onehot"),
    ("sparse_top_k", "SparseTopKCategoricalAccuracy", "probs", "labels"),
    ("mae", "MeanAbsoluteError", "reg_p", "reg_t"),
    ("mse", "MeanSquaredError", "reg_p", "reg_t"),
]


@pytest.mark.parametrize("name,cls,p,t", METRIC_CASES)
def test_metrics_match_tf_keras_across_batches(data, name, cls, p, t):
    ref = getattr(tf_keras.metrics, cls)()
    mean = metrics.Mean(name)
    yp, yt = data[p], data[t]
    if name.startswith(("top_k", "sparse_top")):
        ref = getattr(tf_keras.metrics, cls)(k=2)
    for sl in (slice(0, 5), slice(5, 16)):  # unequal batches: a mean over samples, not over batches
        ref.update_state(yt[sl], yp[sl])
        fn = metrics.resolve(name, torch.from_numpy(yp[sl]), yt[sl])
        kwargs = {"k": 2} if name.startswith(("top_k", "sparse_top")) else {}
        mean.update_state(fn(torch.from_numpy(yp[sl]), torch.as_tensor(yt[sl]), **kwargs))
    assert abs(mean.result() - float(ref.result())) <= 1e-6 * max(1.0, abs(float(ref.result())))


def test_accuracy_resolution_like_keras():
    p3, p1 = torch.zeros(4, 3), torch.zeros(4, 1)
    assert metrics.resolve("accuracy", p1, np.zeros((4, 1))) is metrics.binary_accuracy
    assert metrics.resolve("acc", p3, np.zeros(4)) is metrics.sparse_categorical_accuracy
    assert metrics.resolve("accuracy", p3, np.zeros((4, 1))) is metrics.sparse_categorical_accuracy
    assert metrics.resolve("accuracy", p3, np.zeros((4, 3))) is metrics.categorical_accuracy


# ------------------------------------------------------------------------------------- fit
def _blobs(n=96, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.normal(size=(n, 4)) + 2.0 * np.eye(3, 4)[y]).astype(np.float32)
    return x, y


def _mlp():
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))


def test_fit_reduces_loss_and_history(capsys):
    torch.manual_seed(0)
    x, y = _blobs()
    model = tkio.Model(_mlp())
    model.compile("adam", losses.get("sparse_categorical_crossentropy", from_logits=True), metrics=["accuracy"])
    assert isinstance(model.optimizer, torch.optim.Adam) and model.optimizer.defaults["eps"] == 1e-7
    assert model.optimizer.defaults["lr"] == 1e-3
    model.optimizer.param_groups[0]["lr"] = 0.02  # a few steps suffice
    before = model.evaluate(x, y, verbose=0)
    hist = model.fit(x, y, batch_size=16, epochs=5, verbose=1, validation_data=(x[:32], y[:32]))
    out = capsys.readouterr().out
    assert "Epoch 1/5" in out and "Epoch 5/5" in out and "loss:" in out and "val_accuracy:" in out
    assert list(hist.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert hist.epoch == [0, 1, 2, 3, 4] and all(len(v) == 5 for v in hist.history.values())
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    after = model.evaluate(x, y, verbose=0)
    assert after[0] < before[0] and after[1] > 0.8
    assert model.module.training  # fit/evaluate restore the mode


def test_fit_reproducible_under_manual_seed():
    x, y = _blobs()
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = tkio.Model(_mlp())
        model.compile("sgd", nn.CrossEntropyLoss())
        runs.append(model.fit(x, y.astype(np.int32), batch_size=8, epochs=2, verbose=0).history["loss"])
    assert runs[0] == runs[1]


def test_evaluate_return_conventions():
    torch.manual_seed(0)
    x, y = _blobs(40)
    model = tkio.Model(nn.Sequential(_mlp(), nn.Softmax(-1)))
    model.compile(torch.optim.SGD(model.parameters(), lr=0.1), "sparse_categorical_crossentropy")
    loss = model.evaluate(x, y, verbose=0)
    assert isinstance(loss, float)
    probs = torch.from_numpy(model.predict(x))
    assert abs(loss - float(losses.get("sparse_categorical_crossentropy")(probs, torch.from_numpy(y)))) < 1e-6
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["acc", "sparse_top_k"])
    res = model.evaluate(x, y, batch_size=7, verbose=0)
    assert isinstance(res, list) and len(res) == 3 and abs(res[0] - loss) < 1e-6
    acc = float((probs.argmax(-1).numpy() == y).mean())
    assert abs(res[1] - acc) < 1e-6 and res[2] == 1.0  # 3 classes: always in the top 5


def test_fit_with_dataloader_and_several_inputs():
    torch.manual_seed(0)
    x, y = _blobs()

    class TwoIn(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 8), nn.Linear(2, 8)
            self.out = nn.Linear(8, 3)

        def forward(self, u, v):
            return self.out(torch.relu(self.a(u) + self.b(v)))

    model = tkio.Model(TwoIn())
    model.compile("adam", losses.get("sparse_categorical_crossentropy", from_logits=True), metrics=["accuracy"])
    hist = model.fit([x[:, :2], x[:, 2:]], y, batch_size=16, epochs=3, verbose=0)
    assert len(hist.history["loss"]) == 3
    ds = TensorDataset(torch.from_numpy(x[:, :2]), torch.from_numpy(x[:, 2:]), torch.from_numpy(y))
    loader = DataLoader([((a, b), c) for a, b, c in ds], batch_size=16, shuffle=True)
    hist = model.fit(loader, epochs=2, verbose=0, validation_data=loader)
    assert list(hist.history) == ["loss", "accuracy", "val_loss", "val_accuracy"]
    res = model.evaluate(loader, verbose=0)
    assert abs(res[0] - model.evaluate([x[:, :2], x[:, 2:]], y, verbose=0)[0]) < 1e-5


def test_fit_needs_compile():
    model = tkio.Model(_mlp())
    with pytest.raises(tkio.TorchKerasIOError):
        model.fit(*_blobs(), verbose=0)
    with pytest.raises(tkio.TorchKerasIOError):
        model.compile("nope", "mse")


def test_training_mode_during_fit_eval_during_validation():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            seen.append(self.training)
            return self.lin(x)

    x, y = _blobs(32)
    model = tkio.Model(Probe())
    model.compile("sgd", losses.get("sparse_categorical_crossentropy", from_logits=True))
    model.eval()
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, validation_data=(x, y))
    assert seen == [True, False] and not model.module.training


# ------------------------------------------------------------------------------------- vs tf_keras
def _keras_mlp():
    L = tf_keras.layers
    inp = L.Input((4,), name="x")
    h = L.Dense(8, activation="tanh", name="hidden")(inp)
    out = L.Dense(3, activation="softmax", name="probs")(h)
    model = tf_keras.Model(inp, out, name="mlp")
    rng = np.random.default_rng(5)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in model.get_weights()])
    return model


@pytest.mark.parametrize("loss,target", [("categorical_crossentropy", "onehot"), ("mse", "onehot"),
                                         ("sparse_categorical_crossentropy", "labels")])  # fmt: skip
def test_one_epoch_sgd_matches_tf_keras(tmp_path, loss, target):
    x, labels = _blobs(70, seed=2)  # 70 samples, batch 16: the last batch is partial
    y = np.eye(3, dtype=np.float32)[labels] if target == "onehot" else labels
    keras_model = _keras_mlp()
    keras_model.save_weights(tmp_path / "w.h5")
    model = tkio.model_from_json(keras_model.to_json())
    model.load_weights(tmp_path / "w.h5")
    metric = ["accuracy"]
    keras_model.compile(tf_keras.optimizers.SGD(learning_rate=0.5, momentum=0.0), loss=loss, metrics=metric)
    model.compile(torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.0), loss=loss, metrics=metric)
    ref_eval = keras_model.evaluate(x, y, batch_size=16, verbose=0)
    assert np.allclose(model.evaluate(x, y, batch_size=16, verbose=0), ref_eval, rtol=1e-5, atol=1e-7)
    ref_hist = keras_model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    hist = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    keras_model.save_weights(tmp_path / "after.h5")
    expected = tkio.model_from_json(keras_model.to_json())
    expected.load_weights(tmp_path / "after.h5")
    for p, q in zip(model.parameters(), expected.parameters()):
        assert_close_rel(p, q, 1e-5)
    assert abs(hist.history["loss"][0] - ref_hist.history["loss"][0]) <= 1e-5 * ref_hist.history["loss"][0]
    assert abs(hist.history["accuracy"][0] - ref_hist.history["accuracy"][0]) < 1e-6


# ------------------------------------------------------------------------------------- summary
def test_summary_keras_graph(capsys):
    model = tkio.model_from_json(_keras_mlp().to_json())
    assert model.summary() is None
    out = capsys.readouterr().out
    assert "x (InputLayer)" in out and "hidden (Dense)" in out and "probs (Dense)" in out and '"mlp"' in out
    assert "(None, 8)" in out and "(None, 3)" in out
    assert f"Total params: {4 * 8 + 8 + 8 * 3 + 3:,}" in out


def test_summary_torch_module(capsys):
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    module[3].requires_grad_(False)
    tkio.Model(module).summary(input_shape=(3, 8, 8))
    out = capsys.readouterr().out
    total = sum(p.numel() for p in module.parameters()) + 8  # + BatchNorm moving mean and variance
    assert "0 (Conv2d)" in out and "3 (Linear)" in out and "(None, 4, 6, 6)" in out
    assert f"Total params: {total:,}" in out and f"Non-trainable params: {144 * 2 + 2 + 8:,}" in out


def test_training_attributes_are_not_submodules():
    model = tkio.Model(_mlp(), optimizer="rmsprop", loss=nn.CrossEntropyLoss(), metrics=["accuracy"])
    assert isinstance(model.optimizer, torch.optim.RMSprop)
    assert "loss" not in dict(model.named_children())
    model.loss = "sparse_categorical_crossentropy"  # reassignable, as a loader would
    assert set(model.state_dict()) == {"module." + k for k in model.module.state_dict()}


def test_model_save_to_json_and_compiled_names(tmp_path):
    keras_model = _keras_mlp()
    model = tkio.model_from_json(keras_model.to_json())
    assert json.loads(model.to_json())["config"]["name"] == "mlp" and "mlp" in model.to_yaml()
    model.compile("sgd", "categorical_crossentropy", metrics=["accuracy"])
    assert model.loss == "categorical_crossentropy" and model.metrics == ["accuracy"]  # names kept, for saving
    model.save(tmp_path / "m.h5")
    again = tkio.load_model(tmp_path / "m.h5", compile=False)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    assert_close_rel(again.predict(x), model.predict(x), 1e-6)


def test_resolved_metric_names_as_keras_saves_them():
    x, y = _blobs(20)
    model = tkio.Model(nn.Sequential(_mlp(), nn.Softmax(-1)))
    model.compile("sgd", "categorical_crossentropy", metrics=["accuracy", "mae", "top_k_categorical_accuracy"])
    assert model.resolved_metrics is None
    model.evaluate(x, np.eye(3, dtype=np.float32)[y], verbose=0)
    expected = ["categorical_accuracy", "mean_absolute_error", "top_k_categorical_accuracy"]
    assert model.resolved_metrics == expected
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["acc"])
    model.evaluate(x, y, verbose=0)
    assert model.resolved_metrics == ["sparse_categorical_accuracy"]
    assert metrics.resolved_name("accuracy", y_pred_shape=(4, 1), y_true_shape=(4, 1)) == "binary_accuracy"
    assert metrics.resolved_name("acc", loss="binary_crossentropy") == "binary_accuracy"
    assert metrics.resolved_name("accuracy", loss="mse") == "categorical_accuracy"
