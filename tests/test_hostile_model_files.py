"""Malformed training state (training_config, torch optimizer record and datasets) and NaN/Inf weights in a full-model file are refused with FileFormatError."""

from __future__ import annotations

import json

import pytest
from hostile_corpus import our_model


@pytest.fixture
def model_file(tmp_path):
    import torch

    import torchkeras_io as tkio

    model = our_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    path = tmp_path / "m.h5"
    tkio.save_model(model, path, optimizer=opt, loss="mse", input_shape=(6,))
    return path


@pytest.mark.parametrize("value", ["[1, 2]", '"mse"', "3", '{"loss": "mse", "metrics": 1}'])
def test_training_config_not_an_object(model_file, value):
    import h5py

    import torchkeras_io as tkio

    with h5py.File(model_file, "r+") as f:
        f.attrs["training_config"] = value.encode()
    with pytest.raises(tkio.FileFormatError, match="training_config"):
        tkio.load_model(model_file)
    tkio.load_model(model_file, compile=False)  # the model itself is fine


@pytest.mark.parametrize(
    "edit",
    [
        lambda r: r.pop("param_groups"),
        lambda r: r.update(param_groups=5),
        lambda r: r.update(param_groups=[5]),
        lambda r: r["param_groups"][0].update(params=7),
        lambda r: r["param_groups"][0].update(lr="x"),
        lambda r: r.update(state=[1]),
        lambda r: r.update(state={k: "x" for k in r["state"]}),
        lambda r: r.update(state={k: {"exp_avg": {"datasets": 3}} for k in r["state"]}),
        lambda r: r.update(scheduler={"class_name": "os.system", "state": {}}),
        lambda r: r.update(scheduler={"class_name": "StepLR"}),
    ],
)
def test_malformed_torch_optimizer_record(model_file, edit):
    import h5py

    import torchkeras_io as tkio

    with h5py.File(model_file, "r+") as f:
        record = json.loads(f["torch_optimizer"].attrs["record"])
        edit(record)
        f["torch_optimizer"].attrs["record"] = json.dumps(record).encode()
    with pytest.raises(tkio.FileFormatError, match="optimizer record"):
        tkio.load_model(model_file)


@pytest.mark.parametrize("kind", ["terabytes", "scalar", "wrong_shape"])
def test_optimizer_dataset_shapes(model_file, kind):
    import h5py
    import numpy as np

    import torchkeras_io as tkio

    with h5py.File(model_file, "r+") as f:
        names = []
        f["torch_optimizer"].visititems(lambda n, o: names.append(n) if "exp_avg" in n and o.ndim == 2 else None)
        path = "torch_optimizer/" + names[0]
        del f[path]
        if kind == "terabytes":
            f.create_dataset(path, shape=(2**20, 2**20), dtype="f4")
        elif kind == "scalar":
            f[path] = np.float32(1.0)
        else:
            f[path] = np.zeros((7, 7), "f4")
    with pytest.raises(tkio.FileFormatError, match="optimizer"):
        tkio.load_model(model_file)


def test_nonfinite_refused_by_load_model(model_file):
    import h5py
    import numpy as np
    import torch

    import torchkeras_io as tkio

    with h5py.File(model_file, "r+") as f:
        names = []
        f["model_weights"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        f["model_weights/" + names[0]][(0,) * f["model_weights/" + names[0]].ndim] = np.inf
    model = tkio.load_model(model_file, compile=False)  # loaded faithfully by default
    assert any(bool(torch.isinf(p).any()) for p in model.parameters())
    with pytest.raises(tkio.FileFormatError, match="NaN/Inf") as err:
        tkio.load_model(model_file, allow_nonfinite=False)
    assert err.value.layer and err.value.weight and err.value.filepath == str(model_file)
