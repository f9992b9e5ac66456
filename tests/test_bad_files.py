"""Bad files end in the library's own errors, naming the file, layer and weight."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import torchkeras_io as tkio


@pytest.fixture
def good(tmp_path):
    path = tmp_path / "good.h5"
    tkio.save_weights(nn.Sequential(nn.Linear(3, 2), nn.LSTM(2, 2)), path)
    return path


def _model():
    return nn.Sequential(nn.Linear(3, 2), nn.LSTM(2, 2))


def test_not_hdf5(tmp_path):
    path = tmp_path / "x.h5"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(tkio.FileFormatError, match="not an HDF5 file") as err:
        tkio.load_weights(_model(), path)
    assert err.value.filepath == str(path)


def test_zip_is_named(tmp_path):
    path = tmp_path / "x.keras"
    path.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    with pytest.raises(tkio.FileFormatError, match="ZIP"):
        tkio.load_weights(_model(), path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        tkio.load_weights(_model(), tmp_path / "nope.h5")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated(good, tmp_path, fraction):
    data = good.read_bytes()
    path = tmp_path / "cut.h5"
    path.write_bytes(data[: int(len(data) * fraction)])
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(tkio.FileFormatError):
        tkio.load_weights(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_no_layer_names(tmp_path):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f.create_group("dense")
    with pytest.raises(tkio.FileFormatError, match="layer_names"):
        tkio.load_weights(_model(), path)


def test_missing_layer_group(good):
    with h5py.File(good, "r+") as f:
        del f["0"]
    with pytest.raises(tkio.FileFormatError) as err:
        tkio.load_weights(_model(), good)
    assert err.value.layer == "0"


def test_missing_dataset(good):
    with h5py.File(good, "r+") as f:
        del f["0/0/kernel:0"]
    with pytest.raises(tkio.FileFormatError, match="missing dataset") as err:
        tkio.load_weights(_model(), good)
    assert err.value.layer == "0" and err.value.weight == "0/kernel:0"
    assert "good.h5" in str(err.value) and "0/kernel:0" in str(err.value)


def test_string_dataset(good):
    with h5py.File(good, "r+") as f:
        del f["0/0/kernel:0"]
        f["0"].create_dataset("0/kernel:0", data=np.array([b"abc", b"def"]))
    with pytest.raises(tkio.FileFormatError, match="dtype"):
        tkio.load_weights(_model(), good)


def test_compound_dataset(good):
    with h5py.File(good, "r+") as f:
        del f["0/0/bias:0"]
        f["0"].create_dataset("0/bias:0", data=np.zeros(2, dtype=[("a", "f4"), ("b", "i4")]))
    with pytest.raises(tkio.FileFormatError, match="dtype"):
        tkio.load_weights(_model(), good)


def test_wrong_shape_is_a_mismatch(good):
    with h5py.File(good, "r+") as f:
        del f["0/0/bias:0"]
        f["0"].create_dataset("0/bias:0", data=np.zeros(5, dtype="f4"))
    with pytest.raises(tkio.WeightMismatchError) as err:
        tkio.load_weights(_model(), good)
    assert err.value.layer == "0" and err.value.weight == "bias"


def test_huge_claimed_shape_is_refused_before_reading(good):
    with h5py.File(good, "r+") as f:
        del f["0/0/kernel:0"]
        f["0"].create_dataset("0/kernel:0", shape=(2**20, 2**20), dtype="f4")  # 4 TiB, never stored
    with pytest.raises(tkio.WeightMismatchError):
        tkio.load_weights(_model(), good)


def test_soft_and_external_links_refused(good, tmp_path):
    with h5py.File(good, "r+") as f:
        del f["0/0/kernel:0"]
        f["0/0"]["kernel:0"] = h5py.SoftLink("/1/1/lstm_cell/kernel:0")
    with pytest.raises(tkio.FileFormatError, match="SoftLink"):
        tkio.load_weights(_model(), good)
    with h5py.File(good, "r+") as f:
        del f["0/0/kernel:0"]
        f["0/0"]["kernel:0"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/x")
    with pytest.raises(tkio.FileFormatError, match="ExternalLink"):
        tkio.load_weights(_model(), good)


def test_weight_names_not_strings(good):
    with h5py.File(good, "r+") as f:
        f["0"].attrs["weight_names"] = np.array([1.0, 2.0])
    with pytest.raises(tkio.FileFormatError, match="weight_names"):
        tkio.load_weights(_model(), good)


def test_duplicate_layer_names(good):
    with h5py.File(good, "r+") as f:
        f.attrs["layer_names"] = [b"0", b"0"]
    with pytest.raises(tkio.FileFormatError, match="duplicate"):
        tkio.load_weights(_model(), good)


def test_dotdot_and_slash_layer_names(good):
    with h5py.File(good, "r+") as f:
        f.attrs["layer_names"] = [b"../0", b"1"]
    with pytest.raises(tkio.FileFormatError):
        tkio.load_weights(_model(), good)
    with h5py.File(good, "r+") as f:
        f.attrs["layer_names"] = [b"/0", b"1"]
    with pytest.raises(tkio.FileFormatError, match="invalid"):
        tkio.load_weights(_model(), good)


def test_not_a_module(good):
    with pytest.raises(tkio.TorchKerasIOError, match="nn.Module"):
        tkio.load_weights({"weight": torch.zeros(1)}, good)
