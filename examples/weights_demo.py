"""Demo: a PyTorch model's weights saved in the Keras HDF5 layout and loaded back.

Trains a small CNN for a few steps on random data, saves its weights with torchkeras_io, loads
them into a fresh model (bit-exact), and then does a transfer-learning load by name into a model
with a different head, printing the load report.

    python examples/weights_demo.py
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn

import torchkeras_io as tkio


def make_model(classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(16, classes),
    )  # fmt: skip


def main() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(256, 1, 16, 16), torch.randint(0, 10, (256,))
    model = make_model(10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    print(f"trained: loss {loss.item():.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cnn_weights.h5")
        tkio.save_weights(model, path)
        print(f"saved {os.path.getsize(path):,} bytes to {os.path.basename(path)}")

        restored = make_model(10).eval()
        print(tkio.load_weights(restored, path))
        same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
        with torch.no_grad():
            max_diff = (model(x) - restored(x)).abs().max().item()
        print(f"bit-exact state: {same}; max output difference: {max_diff}")

        transfer = make_model(3)
        report = tkio.load_weights(transfer, path, by_name=True, skip_mismatch=True)
        print(report)
        if not same or max_diff != 0.0 or len(report.mismatched) != 2:
            raise SystemExit("demo failed")


if __name__ == "__main__":
    import warnings

    warnings.simplefilter("ignore", tkio.TorchKerasIOWarning)  # the report below says it all
    main()
