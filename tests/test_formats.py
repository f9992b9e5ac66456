"""Every checkpoint format, at the protocol level: what write_checkpoint writes, open_checkpoint reads back
(names, shapes, dtypes, bytes, attributes, training state), detect names every kind by its bytes, and a
file that is truncated, of another kind or not a file at all ends in an error naming it."""

from __future__ import annotations

import json
import os
import zipfile

import h5py
import pytest
import torch

from torchkeras_io._checkpoint.reader import Keras3Reader, LegacyH5Reader, open_checkpoint
from torchkeras_io._checkpoint.records import Checkpoint, LayerWeights
from torchkeras_io._checkpoint.training import TF_KERAS, OptimizerVariable, TrainingRecord
from torchkeras_io._checkpoint.writer import write_checkpoint
from torchkeras_io._formats.detect import Format, chosen_format, detect, sniff
from torchkeras_io._formats.hdf5 import open_readonly
from torchkeras_io._formats.keras3_store import StoreObject
from torchkeras_io._tensors import Lazy
from torchkeras_io.errors import CheckpointExistsError, FileFormatError, TorchKerasIOError


def _t(shape, dtype=torch.float32, k: int = 1) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    values = torch.arange(n, dtype=torch.float64).reshape(shape) * k / 7
    return values.to(dtype) if dtype.is_floating_point else (values * 7).to(dtype)


TENSORS = {
    "kernel": _t((3, 4)),
    "bias": _t((4,), torch.float16, 2),
    "embeddings": _t((5, 2), torch.bfloat16, 3),
    "count": _t((), torch.int64, 5),
}


def _layers() -> list:
    return [
        LayerWeights("dense", [Lazy.of(n, t) for n, t in TENSORS.items()], attrs={"keras_class": "Dense"}),
        LayerWeights("block/bn", [Lazy.of("gamma", _t((4,)))], [Lazy.of("num_batches_tracked", _t((), torch.int64))]),
        LayerWeights("dropout", []),
    ]


def _same(lazy, tensor: torch.Tensor) -> bool:
    got = lazy.read()
    return got.dtype == tensor.dtype and tuple(lazy.shape) == tuple(tensor.shape) and torch.equal(got, tensor)


# ---------------------------------------------------------------------------------- legacy HDF5
def test_legacy_weights_round_trip(tmp_path):
    path = tmp_path / "w.h5"
    top = [Lazy.of("scale", _t((2,)))]
    write_checkpoint(path, Checkpoint(Format.LEGACY_WEIGHTS, _layers(), top))
    assert detect(path) == Format.LEGACY_WEIGHTS
    with open_checkpoint(path) as reader:
        assert isinstance(reader, LegacyH5Reader) and reader.format == Format.LEGACY_WEIGHTS
        assert (reader.keras_version, reader.backend) == ("2.15.0", "torch")
        assert reader.layer_names == ["dense", "block/bn", "dropout"] and reader.store is None
        dense = reader.layer("dense")
        assert [w.name for w in dense.weights] == [f"dense/{n}:0" for n in TENSORS]
        assert all(_same(w, t) for w, t in zip(dense.weights, TENSORS.values()))
        assert dense.attrs == {"keras_class": "Dense"} and dense.extras == {}
        bn = reader.layer("block/bn")
        assert _same(bn.weights[0], _t((4,))) and _same(bn.extras["num_batches_tracked"], _t((), torch.int64))
        assert reader.layer("dropout").weights == []
        assert _same(reader.top_level().weights[0], _t((2,)))
        assert reader.model_config is None and reader.training() is None


def test_legacy_model_round_trip_with_training_state(tmp_path):
    path = tmp_path / "m.h5"
    config = {"class_name": "Sequential", "config": {"name": "m", "layers": []}}
    record = TrainingRecord(TF_KERAS, {"loss": "mse", "optimizer_config": {"class_name": "SGD", "config": {}}},
                            [OptimizerVariable("SGD/iter:0", torch.tensor(3, dtype=torch.int64))])  # fmt: skip
    attrs = {"keras_version": "2.15.0", "backend": "tensorflow", "model_config": json.dumps(config).encode()}
    write_checkpoint(path, Checkpoint(Format.LEGACY_MODEL, _layers(), attrs=attrs, training=record),
                     compression="gzip", gzip_level=4)  # fmt: skip
    assert detect(path) == Format.LEGACY_MODEL
    with open_checkpoint(path) as reader:
        assert reader.format == Format.LEGACY_MODEL and reader.layer_names == ["dense", "block/bn", "dropout"]
        assert json.loads(reader.model_config) == config and reader.torch_config is None
        assert reader.attributes().backend == "tensorflow"
        assert all(_same(w, t) for w, t in zip(reader.layer("dense").weights, TENSORS.values()))
        got = reader.training()
        assert got.config == record.config and [v.name for v in got.variables] == ["SGD/iter:0"]
        assert int(got.variables[0].value(None)) == 3
    with h5py.File(path, "r") as f:
        assert f["model_weights/dense/dense/kernel:0"].compression == "gzip"


def test_write_is_atomic_and_refuses_to_overwrite(tmp_path):
    path = tmp_path / "w.h5"
    write_checkpoint(path, Checkpoint(Format.LEGACY_WEIGHTS, _layers()))
    before = path.read_bytes()
    with pytest.raises(CheckpointExistsError):
        write_checkpoint(path, Checkpoint(Format.LEGACY_WEIGHTS, []), overwrite=False)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["w.h5"]


# ------------------------------------------------------------------------------------- Keras 3
def _objects() -> list:
    return [
        StoreObject("", None, [], {}),
        StoreObject(
            "layers/dense", "dense", [Lazy.of("kernel", TENSORS["kernel"]), Lazy.of("bias", TENSORS["bias"])], {}
        ),
        StoreObject("layers/lstm", "lstm", [], {"extra": Lazy.of("extra", _t((1,)))}),
        StoreObject("layers/lstm/cell", None, [Lazy.of(f"v{i}", _t((2, 2), k=i + 1)) for i in range(3)], {}),
        StoreObject("layers/dropout", "dropout", [], {}),
    ]


def _check_store(reader, names=("dense", "lstm")) -> None:
    assert isinstance(reader, Keras3Reader) and reader.backend is None
    by_path = reader.layers_by_path()
    assert list(by_path) == ["layers/dense", "layers/lstm", "layers/dropout"]
    assert [by_path[p].name for p in ("layers/dense", "layers/lstm")] == list(names)
    dense = by_path["layers/dense"]
    assert [w.name for w in dense.weights] == ["vars/0", "vars/1"] and dense.attrs == {"v3_path": "layers/dense"}
    assert _same(dense.weights[0], TENSORS["kernel"]) and _same(dense.weights[1], TENSORS["bias"])
    lstm = by_path["layers/lstm"]  # a recurrent layer's variables live in its cell
    assert [w.name for w in lstm.weights] == ["cell/vars/0", "cell/vars/1", "cell/vars/2"]
    assert all(_same(w, _t((2, 2), k=i + 1)) for i, w in enumerate(lstm.weights))
    assert _same(lstm.extras["extra"], _t((1,)))
    assert set(reader.store) >= {"", "layers/dense", "layers/lstm/cell"} and reader.top_level() is None


def test_keras3_store_round_trip(tmp_path):
    path = tmp_path / "w.weights.h5"
    objects = _objects()
    write_checkpoint(path, Checkpoint(Format.KERAS3_WEIGHTS, objects=objects, order=[o.path for o in objects[1:]]))
    assert detect(path) == Format.KERAS3_WEIGHTS and sniff(path) == "hdf5"
    with open_checkpoint(path) as reader:
        assert reader.format == Format.KERAS3_WEIGHTS and reader.training() is None
        _check_store(reader)
        assert reader.layer_names == ["dense", "lstm", "dropout"]


def test_sharded_store_round_trip(tmp_path):
    path = tmp_path / "w.weights.json"
    objects = _objects()
    write_checkpoint(path, Checkpoint(Format.SHARDED, objects=objects, order=[o.path for o in objects[1:]]),
                     max_shard_bytes=60)  # fmt: skip
    shards = sorted(p.name for p in tmp_path.glob("w_*.weights.h5"))
    assert len(shards) > 1 and detect(path) == Format.SHARDED
    assert all(detect(tmp_path / s) == Format.KERAS3_WEIGHTS for s in shards)
    with open_checkpoint(path) as reader:
        assert reader.format == Format.SHARDED
        _check_store(reader)
    (tmp_path / shards[-1]).unlink()
    with pytest.raises(FileFormatError, match="missing") as info:
        open_checkpoint(path)
    assert info.value.filepath == str(path)


def test_keras_archive_round_trip(tmp_path):
    path = tmp_path / "m.keras"
    config = {"class_name": "Sequential", "config": {"name": "m", "layers": []}}
    record = TrainingRecord("keras3", {"optimizer": {"class_name": "SGD"}, "loss": "mse"},
                            [OptimizerVariable("sgd/iteration", torch.tensor(4, dtype=torch.int64))])  # fmt: skip
    write_checkpoint(path, Checkpoint(Format.KERAS, objects=_objects(), config=config,
                                      metadata={"keras_version": "3.15.1"}, training=record))  # fmt: skip
    assert detect(path) == Format.KERAS and sniff(path) == "zip"
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
    # the config names the layers: what the engine's walker of a config gives
    places = lambda cfg: [("layers/dense", "first"), ("layers/lstm", "second"), ("layers/dropout", "third")]  # noqa: E731
    with open_checkpoint(path, config_layers=places) as reader:
        assert reader.format == Format.KERAS and reader.keras_version == "3.15.1"
        _check_store(reader, names=("first", "second"))
        assert reader.layer_names == ["first", "second", "third"]
        assert reader.model_config == {**config, "compile_config": record.config}
        assert reader.training_config == record.config
        got = reader.training()
        assert got.config == record.config and int(got.variables[0].value(None)) == 4


# ----------------------------------------------------------------------------------- detection
def test_detect_every_kind(tmp_path):
    formats = {}
    for fmt, name, ckpt in [
        (Format.LEGACY_WEIGHTS, "a.h5", Checkpoint(Format.LEGACY_WEIGHTS, _layers())),
        (Format.LEGACY_MODEL, "b.h5", Checkpoint(Format.LEGACY_MODEL, _layers(), attrs={"model_config": "{}"})),
        (Format.KERAS3_WEIGHTS, "c.weights.h5", Checkpoint(Format.KERAS3_WEIGHTS, objects=_objects())),
        (Format.SHARDED, "d.weights.json", Checkpoint(Format.SHARDED, objects=_objects())),
        (Format.KERAS, "e.keras", Checkpoint(Format.KERAS, objects=_objects(), config={})),
    ]:
        write_checkpoint(tmp_path / name, ckpt, max_shard_bytes=1 << 20)
        formats[name] = fmt
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "f.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\x00" * 4)
    formats["f.safetensors"] = Format.SAFETENSORS
    torch.save({"w": torch.zeros(1)}, tmp_path / "g.pt")
    formats["g.pt"] = Format.TORCH
    for name, fmt in formats.items():
        assert detect(tmp_path / name) == fmt, name
        assert str(fmt) == fmt.value  # the CLI's names


@pytest.mark.parametrize(
    "content,match",
    [
        (b"\x89HDF\r\n\x1a\n" + b"\x00" * 40, "truncated or corrupt"),  # the signature and nothing after it
        (b"PK\x03\x04" + b"\x00" * 40, "damaged ZIP"),
        (b"PK\x05\x06" + b"\x00" * 18, "neither a .keras model nor a torch.save file"),  # an empty archive
        (b"\x80\x02}q\x00.", "pickle"),
        (b"GIF89a, not a checkpoint", "unknown format"),
        (b"", "unknown format"),
    ],
)
def test_detect_refuses_what_is_no_checkpoint(tmp_path, content, match):
    path = tmp_path / "bad.h5"
    path.write_bytes(content)
    with pytest.raises(FileFormatError, match=match) as info:
        detect(path)
    assert info.value.filepath == str(path)
    with pytest.raises(FileFormatError) as info:
        open_checkpoint(path).close()
    assert info.value.filepath == str(path)


def test_detect_refuses_truncated_and_foreign_hdf5(tmp_path):
    good = tmp_path / "w.h5"
    write_checkpoint(good, Checkpoint(Format.LEGACY_WEIGHTS, _layers()))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[:300])
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = 1
    for path, match in ((cut, "truncated or corrupt"), (foreign, "not a Keras checkpoint")):
        with pytest.raises(FileFormatError, match=match) as info:
            detect(path)
        assert info.value.filepath == str(path)
    with pytest.raises(FileFormatError, match="no 'layer_names'"):
        open_checkpoint(foreign)


# ---------------------------------------------------------------------------------- safe open
def test_open_readonly_errors_name_the_file(tmp_path):
    archive = tmp_path / "m.keras"
    write_checkpoint(archive, Checkpoint(Format.KERAS, objects=_objects(), config={}))
    cut = tmp_path / "cut.h5"
    cut.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    for path, match in ((archive, r"not an HDF5 file \(it is a ZIP archive"), (tmp_path, "is a directory"),
                        (cut, r"cannot open as HDF5 \(truncated or corrupt\?\)")):  # fmt: skip
        with pytest.raises(FileFormatError, match=match) as info:
            open_readonly(path)
        assert info.value.filepath == str(path)
        with pytest.raises(FileFormatError) as info:
            LegacyH5Reader(path)
        assert info.value.filepath == str(path)
    with pytest.raises(FileNotFoundError):
        open_readonly(tmp_path / "missing.h5")
    write_checkpoint(tmp_path / "w.h5", Checkpoint(Format.LEGACY_WEIGHTS, _layers()))
    with open_readonly(tmp_path / "w.h5") as f:
        assert f.mode == "r"


def test_chosen_format():
    assert chosen_format("m.keras", None, ".keras") == "keras" and chosen_format("m.h5", None, ".keras") == "h5"
    assert chosen_format("w.weights.h5", None, ".weights.h5") == "keras"
    assert chosen_format("w.weights.h5", "h5", ".weights.h5") == "h5"
    with pytest.raises(TorchKerasIOError, match="format must be"):
        chosen_format("m.h5", "tf", ".keras")
