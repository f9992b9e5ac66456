"""load_model opens a checkpoint once: one HDF5 open for a legacy ``.h5``, one ZIP open (and the one
HDF5 open of its weights store) for a ``.keras``, with the optimizer restored."""

from __future__ import annotations

import collections
import zipfile

import h5py
import pytest
import torch
from torch import nn

import torchkeras_io as tkio


@pytest.fixture
def opens(monkeypatch):
    """Counts of ``h5py.File`` and ``zipfile.ZipFile`` opens by a path or file object."""
    counts = collections.Counter()
    h5_init, zip_init = h5py.File.__init__, zipfile.ZipFile.__init__

    def h5_file(self, name, *args, **kwargs):
        # h5py wraps an already open file in a File too (``dataset.file``): that opens nothing
        if not isinstance(name, (h5py.h5f.FileID, h5py.h5g.GroupID, h5py.h5d.DatasetID)):
            counts["h5"] += 1
        h5_init(self, name, *args, **kwargs)

    def zip_file(self, *args, **kwargs):
        counts["zip"] += 1
        zip_init(self, *args, **kwargs)

    monkeypatch.setattr(h5py.File, "__init__", h5_file)
    monkeypatch.setattr(zipfile.ZipFile, "__init__", zip_file)
    return counts


@pytest.mark.parametrize("name, expected", [("m.h5", {"h5": 1}), ("m.keras", {"h5": 1, "zip": 1})])
def test_load_model_opens_the_file_once(tmp_path, opens, name, expected):
    model = tkio.Model(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    model.compile(torch.optim.Adam(model.module.parameters()), "mse")
    model.fit(torch.randn(8, 3), torch.randn(8, 2), epochs=1, verbose=0)
    with pytest.warns(tkio.TorchKerasIOWarning):  # Adam's epsilon differs between torch and Keras
        model.save(tmp_path / name)
    opens.clear()
    loaded = tkio.load_model(tmp_path / name)
    assert dict(opens) == expected
    assert isinstance(loaded.optimizer, torch.optim.Adam) and loaded.loss == "mse"
    assert loaded.optimizer.state_dict()["state"].keys() == model.optimizer.state_dict()["state"].keys()
