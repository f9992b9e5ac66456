"""The flat formats (safetensors, torch state_dict) at the bytes level: what the writers write the readers
read back bit for bit, with metadata and file order, and a hostile or foreign file ends in a FileFormatError
naming it before any tensor is read."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import bits_equal

from torchkeras_io._formats.flat import read_safetensors, read_torch, write_safetensors, write_torch
from torchkeras_io.errors import CheckpointExistsError, FileFormatError

pytest.importorskip("safetensors")


def _tensors() -> dict:
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 7
    return {
        "b.weight": base,
        "a/kernel": base.t(),  # a non-contiguous view of the same storage: written as its own copy
        "n": torch.tensor(5, dtype=torch.int64),
        "h": torch.linspace(-2, 2, 6, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 3),
    }


def test_safetensors_round_trip(tmp_path):
    path = tmp_path / "x.safetensors"
    tensors = _tensors()
    write_safetensors(path, tensors, {"k": "v"})
    with read_safetensors(path) as f:
        assert f.metadata == {"k": "v"}
        assert set(f.tensors) == set(tensors)
        for name, lazy in f.tensors.items():
            assert lazy.shape == tuple(tensors[name].shape) and lazy.dtype == tensors[name].dtype
            assert bits_equal(lazy.read(), tensors[name].contiguous())


def test_torch_round_trip_keeps_order_and_unwraps_checkpoints(tmp_path):
    tensors = _tensors()
    write_torch(tmp_path / "x.pt", tensors)
    with read_torch(tmp_path / "x.pt") as f:
        assert list(f.tensors) == list(tensors) and f.metadata == {}
        assert all(bits_equal(f.tensors[k].read(), v.contiguous()) for k, v in tensors.items())
    torch.save({"epoch": 3, "model_state_dict": {"w": torch.ones(2)}}, tmp_path / "ckpt.pt")
    with read_torch(tmp_path / "ckpt.pt") as f:
        assert list(f.tensors) == ["w"]


def test_writers_refuse_to_overwrite(tmp_path):
    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"w": torch.ones(1)})
    with pytest.raises(CheckpointExistsError):
        write_safetensors(path, {"w": torch.zeros(1)}, overwrite=False)
    with pytest.raises(CheckpointExistsError):
        write_torch(path, {"w": torch.zeros(1)}, overwrite=False)
    with read_safetensors(path) as f:
        assert f.tensors["w"].read().item() == 1.0


def _safetensors_bytes(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.mark.parametrize(
    "content",
    [
        _safetensors_bytes({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, b"\x00" * 8),
        _safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\x00" * 4),
        _safetensors_bytes({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\x00" * 8),
        (1 << 40).to_bytes(8, "little") + b"{}",
        (10).to_bytes(8, "little") + b"{not json}",
    ],
    ids=["offsets-past-the-end", "shape-vs-size", "unknown-dtype", "huge-header", "bad-json"],
)
def test_hostile_safetensors(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match="bad.safetensors"):
        with read_safetensors(path) as f:
            for lazy in f.tensors.values():
                lazy.read()


@pytest.mark.parametrize(
    "obj, match",
    [([torch.ones(1)], "not a state_dict"), ({"w": 1.0}, "every entry"), ({3: torch.ones(1)}, "every entry")],
)
def test_torch_files_that_are_no_state_dict(tmp_path, obj, match):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(FileFormatError, match=match):
        read_torch(tmp_path / "x.pt")


def test_torch_file_with_a_class_is_not_unpickled(tmp_path):
    torch.save({"w": torch.ones(1), "opt": torch.optim.SGD}, tmp_path / "x.pt")
    with pytest.raises(FileFormatError, match="weights_only"):
        read_torch(tmp_path / "x.pt")
