"""The Keras checkpoint workflow on a PyTorch model: train, save, delete, load, continue, evaluate.

Uses scikit-learn's bundled handwritten-digits data set (1,797 8x8 images; no download).

    python examples/train_workflow.py
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

import torchkeras_io as tkio


def data():
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[:, None]  # (N, 1, 8, 8), NCHW
    y = digits.target.astype("int64")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return (x[:split], y[:split]), (x[split:], y[split:])


def network() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.2), nn.Linear(32, 10), nn.Softmax(dim=1),
    )  # fmt: skip


def main() -> None:
    torch.manual_seed(0)
    (x_train, y_train), (x_test, y_test) = data()
    model = tkio.Model(network())
    model.compile(torch.optim.Adam(model.parameters(), lr=3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])  # fmt: skip
    model.fit(x_train, y_train, batch_size=64, epochs=10, validation_data=(x_test, y_test), verbose=2)
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    print(f"before saving:   test loss {loss:.4f}, test accuracy {acc:.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "digits.h5")
        model.save(path)  # Keras HDF5: architecture, weights, training config, optimizer state
        before = model.predict(x_test)
        del model

        # a native torch model built from the file's Keras config, compiled again: the torch
        # optimizer (with its state), the loss and the metrics are restored
        model = tkio.load_model(path)
        same = np.array_equal(model.predict(x_test), before)
        loss2, acc2 = model.evaluate(x_test, y_test, verbose=0)
        print(f"after reloading: test loss {loss2:.4f}, test accuracy {acc2:.4f} (identical outputs: {same})")
        print(f"                 optimizer {type(model.optimizer).__name__}, step "
              f"{int(next(iter(model.optimizer.state.values()))['step'])}")  # fmt: skip
        if not same or loss2 != loss:
            raise SystemExit("reloaded model differs from the saved one")

    model.fit(x_train, y_train, batch_size=64, epochs=4, validation_data=(x_test, y_test), verbose=2)
    loss3, acc3 = model.evaluate(x_test, y_test, verbose=0)
    print(f"after resuming:  test loss {loss3:.4f}, test accuracy {acc3:.4f}")


if __name__ == "__main__":
    import warnings

    # the Keras side of Adam's state is approximate (epsilon placement); the torch side is exact
    warnings.simplefilter("ignore", tkio.TorchKerasIOWarning)
    main()
