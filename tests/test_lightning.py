"""KerasModelCheckpoint: Keras-format best / last checkpoints from a Lightning Trainer (CPU, 3 short epochs)."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_close_rel, bits_equal, keras_module
from torch import nn

import torchkeras_io as tkio

pl = pytest.importorskip("lightning.pytorch")  # in the `test` extra: present in CI
from torchkeras_io.lightning import KerasModelCheckpoint  # noqa: E402

EPOCHS = 3


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        self.example_input_array = torch.zeros(2, 4)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, 4, generator=g)
        self.y = self.x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(64, 1, generator=g)
        self.snapshots, self.val_losses = [], []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self(x), y))

    def on_train_epoch_end(self):  # runs after the callbacks' hook: the state they saved
        self.val_losses.append(float(self.trainer.callback_metrics["val_loss"]))
        self.snapshots.append(copy.deepcopy(self.net.state_dict()))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x[:48], self.y[:48]), batch_size=16)

    def val_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x[48:], self.y[48:]), batch_size=16)


def _fit(callbacks, tmp_path) -> Regressor:
    model = Regressor()
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's notes on dataloader workers
        warnings.simplefilter("always", tkio.TorchKerasIOWarning)  # ours are what the tests check
        trainer.fit(model)
    return model


def _keras_net(keras):
    return keras.Sequential([keras.layers.Dense(8, activation="relu", input_shape=(4,)), keras.layers.Dense(1)])


def _same_bits(module: nn.Module, state: dict) -> None:
    for k, v in state.items():
        assert bits_equal(module.state_dict()[k], v), k


def test_best_and_last_weights(tmp_path):
    best = KerasModelCheckpoint(
        tmp_path / "w-{epoch:02d}-{val_loss:.4f}.h5",
        monitor="val_loss",
        save_best_only=True,
        save_weights_only=True,
        save_last=True,
        submodule="net",
    )
    model = _fit([best], tmp_path)
    losses = model.val_losses
    assert len(losses) == EPOCHS
    # Keras semantics: a file each time val_loss improves (earlier ones kept), named from epoch and metrics
    improved, low = [], float("inf")
    for epoch, loss in enumerate(losses):
        if loss < low:
            improved.append(epoch)
            low = loss
    expected = {f"w-{e + 1:02d}-{losses[e]:.4f}.h5" for e in improved} | {"last.h5"}
    assert {p.name for p in tmp_path.glob("*.h5")} == expected
    b = improved[-1]
    assert best.best == losses[b] and best.best_model_path == str(tmp_path / f"w-{b + 1:02d}-{losses[b]:.4f}.h5")
    assert best.last_model_path == str(tmp_path / "last.h5")

    # back into torch, bit for bit: the best file holds the best epoch's state, last.h5 the final one
    for path, state in ((best.best_model_path, model.snapshots[b]), (tmp_path / "last.h5", model.snapshots[-1])):
        fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        assert tkio.load_weights(fresh, path).all_loaded
        _same_bits(fresh, state)

    # and into the equivalent Keras model
    keras = keras_module("tf_keras")
    km = _keras_net(keras)
    km.load_weights(best.best_model_path)
    x = np.random.default_rng(0).standard_normal((5, 4)).astype("float32")
    torch_net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    torch_net.load_state_dict(model.snapshots[b])
    with torch.no_grad():
        expected_out = torch_net(torch.from_numpy(x)).numpy()
    assert_close_rel(km.predict(x, verbose=0), expected_out, 1e-5)


def test_every_epoch_full_model_with_optimizer(tmp_path, capsys):
    ckpt = KerasModelCheckpoint(tmp_path / "model-{epoch}.h5", verbose=1, submodule="net", loss="mse")
    model = _fit([ckpt], tmp_path)
    assert {p.name for p in tmp_path.glob("*.h5")} == {f"model-{e}.h5" for e in range(1, EPOCHS + 1)}
    assert f"Epoch {EPOCHS}: saving model to {tmp_path / f'model-{EPOCHS}.h5'}" in capsys.readouterr().out
    path = tmp_path / f"model-{EPOCHS}.h5"
    restored = tkio.load_model(path)  # architecture, weights and the Adam state
    assert type(restored.optimizer).__name__ == "Adam" and restored.optimizer.state
    fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    tkio.load_weights(fresh, path)
    _same_bits(fresh, model.snapshots[-1])
    x = np.random.default_rng(1).standard_normal((5, 4)).astype("float32")
    with torch.no_grad():
        expected_out = fresh(torch.from_numpy(x)).numpy()
    keras = keras_module("tf_keras")
    assert_close_rel(keras.models.load_model(str(path)).predict(x, verbose=0), expected_out, 1e-5)


def test_max_mode_threshold_and_missing_metric(tmp_path):
    # nothing beats the threshold: no file; a metric that is never logged: a warning, no file
    never = KerasModelCheckpoint(tmp_path / "a.h5", save_best_only=True, save_weights_only=True,
                                 initial_value_threshold=0.0)  # fmt: skip
    missing = KerasModelCheckpoint(tmp_path / "b.h5", monitor="val_acc", save_best_only=True, save_weights_only=True)
    assert missing.mode == "max" and never.mode == "min"
    with pytest.warns(tkio.TorchKerasIOWarning, match="val_acc available"):
        _fit([never, missing], tmp_path)
    assert not list(tmp_path.glob("*.h5"))
    with pytest.raises(tkio.TorchKerasIOError, match="mode"):
        KerasModelCheckpoint(tmp_path / "c.h5", mode="best")


def test_save_freq_in_batches(tmp_path):
    # 3 batches an epoch, every 4th batch overall: epoch 2 batch 1, epoch 3 batch 2 (Keras counts from 1)
    ckpt = KerasModelCheckpoint(tmp_path / "b-{epoch}-{batch}.h5", save_freq=4, save_weights_only=True)
    _fit([ckpt], tmp_path)
    assert {p.name for p in tmp_path.glob("*.h5")} == {"b-2-1.h5", "b-3-2.h5"}
    with pytest.raises(tkio.TorchKerasIOError, match="save_freq"):
        KerasModelCheckpoint(tmp_path / "c.h5", save_freq=0)
