"""Golden test: every file format torchkeras_io writes stays byte-for-byte the same (contents hashed).

A fixed set of modules (weights built from closed-form formulas, not from torch's RNG) is saved
through the public API to every format the library writes: legacy ``.h5`` weights, legacy ``.h5``
full model with optimizer state, Keras 3 ``.weights.h5``, sharded ``.weights.json``, ``.keras``
with optimizer state, and safetensors / torch ``.pt`` written by the CLI ``convert`` command. Each
file's contents are walked and hashed into ``{case: {entry: digest}}`` and compared with
``tests/golden/hashes.json``, so a refactor that changes any written byte fails here.

What is hashed:

* HDF5 (also the shards and the ``model.weights.h5`` inside ``.keras``): every group and dataset
  path; for datasets dtype, shape and sha256 of the raw bytes; for every attribute (root included)
  its dtype and sha256 of its value (string arrays decoded to UTF-8 text, JSON strings hashed as
  canonical JSON).
* ``.keras``: the member names in archive order, ``config.json`` and ``metadata.json`` as canonical JSON, and the
  inner weights store.
* ``.weights.json``: the index as canonical JSON, and each shard as HDF5 above.
* safetensors: the header as canonical JSON and each tensor's bytes; ``.pt``: each tensor's
  name, dtype, shape and bytes (the pickle/ZIP container is not byte-stable across torch versions).

Excluded, because it changes from run to run: only ``date_saved`` (the save timestamp in the
``.keras`` archive's ``metadata.json``); it is dropped from the JSON before hashing. No other
attribute or member differed between runs (checked by running the test in separate processes).
The HDF5 files' container bytes themselves are not compared (h5py/libhdf5 versions may lay them
out differently); their logical contents are.

Regenerate the expectations (only after a deliberate format change, and say so in the commit):

    TKIO_REGEN_GOLDEN=1 python -m pytest tests/test_golden_files.py
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import torchkeras_io as tkio
from torchkeras_io import cli

GOLDEN = Path(__file__).parent / "golden" / "hashes.json"
DROPPED_JSON_KEYS = ("date_saved",)  # the save time, in .keras metadata.json: the only run-dependent value


# ----------------------------------------------------------------------------------- formulas
def _formula(shape, k: float) -> torch.Tensor:
    # integer arithmetic and one division of exact integers: correctly rounded on every CPU (a vectorised
    # sin is not guaranteed to be), so the golden hashes do not depend on the machine
    n = int(np.prod(shape)) if len(shape) else 1
    ints = (torch.arange(n, dtype=torch.int64) * 7919 + int(k * 131)) % 2003
    return (ints.double() / 2003 - 0.5).reshape(shape)


def _fill(module: nn.Module) -> nn.Module:
    """Every parameter and floating buffer from a closed-form formula; integer buffers a constant."""
    with torch.no_grad():
        for k, (name, t) in enumerate(list(module.named_parameters()) + list(module.named_buffers())):
            if t.dtype.is_floating_point:
                v = _formula(tuple(t.shape), float(k))
                if "running_var" in name:
                    v = v.abs() + 0.5  # a variance: positive, not the default 1
                t.copy_(v.to(t.dtype))
            else:
                t.fill_(7)  # num_batches_tracked
    return module


def _optimizer_steps(module: nn.Module, opt) -> None:
    """Two optimizer steps with formula-built gradients, so the optimizer has state to save.

    The gradients are set, not computed by backward: a convolution's backward pass sums in an
    order that depends on the thread count (measured: the Conv2d kernel gradient changed in its
    last bits between 1 thread and the default), which would make the golden hashes depend on the
    machine. The optimizer's update is elementwise and deterministic.
    """
    for step in range(2):
        opt.zero_grad()
        for k, p in enumerate(module.parameters()):
            p.grad = (_formula(tuple(p.shape), 10.0 * step + k + 0.5) * 0.1).to(p.dtype)
        opt.step()


# --------------------------------------------------------------------------------------- models
class RNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 5, batch_first=True)
        self.gru = nn.GRU(5, 3, batch_first=True)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.gru(self.lstm(x)[0])[0][:, -1])


class WithBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(4, 3)
        self.register_buffer("scale", torch.ones(3))
        self.norm = nn.BatchNorm1d(3)

    def forward(self, x):
        return self.norm(self.dense(x) * self.scale)


def _cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5))  # fmt: skip


def _embed():
    return nn.Sequential(nn.Embedding(20, 6), nn.Flatten(), nn.Linear(5 * 6, 3))


def _nested():
    return nn.Sequential(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), nn.Sequential(nn.Linear(8, 6), nn.Tanh()),
                         nn.Linear(6, 2))  # fmt: skip


# name -> (factory, input_shape of the full-model files or None: weights only, optimizer)
CASES = {
    "cnn": (_cnn, (3, 8, 8), lambda p: torch.optim.Adam(p, lr=1e-2)),
    "embedding_dense": (_embed, (5,), lambda p: torch.optim.Adam(p, lr=1e-2)),
    "nested_sequential": (_nested, (4,), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    "lstm_gru": (RNN, None, None),
    "buffer": (WithBuffer, None, None),
}


# -------------------------------------------------------------------------------------- hashing
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj) -> str:
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if k not in DROPPED_JSON_KEYS}
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _text_digest(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError:
        return _sha(text.encode("utf-8"))
    if isinstance(value, (dict, list)):
        return "json:" + _sha(_canonical(value).encode())
    return _sha(text.encode("utf-8"))


def _attr_digest(value) -> str:
    if isinstance(value, bytes):
        return _text_digest(value.decode("utf-8", "surrogateescape"))
    if isinstance(value, str):
        return _text_digest(value)
    arr = np.asarray(value)
    if arr.dtype.kind in ("O", "S", "U"):
        items = [v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v) for v in arr.ravel()]
        return f"str{list(arr.shape)}:" + _sha(json.dumps(items).encode())
    return f"{arr.dtype.str}{list(arr.shape)}:" + _sha(np.ascontiguousarray(arr).tobytes())


def _attrs(prefix: str, obj, out: dict) -> None:
    for name in sorted(obj.attrs.keys()):
        dtype = obj.attrs.get_id(name).dtype
        out[f"{prefix}@{name}"] = f"{dtype.str if dtype.kind != 'O' else 'vlen-str'} " + _attr_digest(obj.attrs[name])


def hash_h5(path, prefix: str = "") -> dict:
    out: dict = {}
    with h5py.File(path, "r") as f:
        _attrs(f"{prefix}/", f, out)

        def visit(name, obj):
            key = f"{prefix}/{name}"
            if isinstance(obj, h5py.Dataset):
                data = obj[()]
                if obj.dtype.kind == "O":
                    raw = json.dumps([str(v) for v in np.asarray(data).ravel()]).encode()
                else:
                    raw = np.ascontiguousarray(data).tobytes()
                out[key] = f"dataset {obj.dtype.str} {list(obj.shape)} " + _sha(raw)
            else:
                out[key] = "group"
            _attrs(key, obj, out)

        f.visititems(visit)
    return out


def hash_keras(path, tmp: Path) -> dict:
    out: dict = {}
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        out["members"] = json.dumps(names)  # in archive order
        for name in names:
            data = zf.read(name)
            if name.endswith(".json"):
                out[name] = "json:" + _sha(_canonical(json.loads(data)).encode())
            elif name.endswith(".h5"):
                inner = tmp / f"inner_{Path(path).name}_{name.replace('/', '_')}"
                inner.write_bytes(data)
                out.update(hash_h5(inner, name))
            else:
                out[name] = _sha(data)
    return out


def hash_sharded(path: Path) -> dict:
    index = json.loads(path.read_text())
    out = {"index": "json:" + _sha(_canonical(index).encode())}
    for shard in sorted(path.parent.glob(path.name.removesuffix(".weights.json") + "_*.weights.h5")):
        out.update(hash_h5(shard, shard.name))
    return out


def hash_safetensors(path: Path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {"header": "json:" + _sha(_canonical(header).encode())}
    body = data[8 + n :]
    for name in sorted(k for k in header if k != "__metadata__"):
        info = header[name]
        a, b = info["data_offsets"]
        out[name] = f"{info['dtype']} {info['shape']} " + _sha(body[a:b])
    return out


def hash_pt(path: Path) -> dict:
    state = torch.load(path, weights_only=True, map_location="cpu")
    out = {}
    for name in sorted(state):
        t = state[name].contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        out[name] = f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)} " + _sha(raw)
    return out


# ------------------------------------------------------------------------------------ writing
def _convert(src: Path, dst: Path, *extra: str) -> None:
    code = cli.main(["convert", str(src), str(dst), "-q", *extra])
    assert code == 0, f"convert {src.name} -> {dst.name}: exit {code}"


def write_and_hash(tmp: Path) -> dict:
    result: dict = {}
    for case, (factory, input_shape, make_opt) in CASES.items():
        d = tmp / case
        d.mkdir()
        module = _fill(factory()).eval()  # eval: BatchNorm keeps its formula statistics
        opt = None
        if make_opt is not None:
            opt = make_opt(module.parameters())
            _optimizer_steps(module, opt)
        files: dict = {}
        tkio.save_weights(module, d / "w.h5")
        files["weights.h5-legacy"] = hash_h5(d / "w.h5")
        tkio.save_weights(module, d / "w.weights.h5")
        files["weights.keras3"] = hash_h5(d / "w.weights.h5")
        tkio.save_weights(module, d / "w.weights.json", max_shard_size=1.5e-6)  # ~1.6 kB: several shards
        files["weights.json-sharded"] = hash_sharded(d / "w.weights.json")
        _convert(d / "w.h5", d / "w.safetensors")  # weights-only input: Keras names <layer>/<weight>
        files["cli.weights.safetensors"] = hash_safetensors(d / "w.safetensors")
        _convert(d / "w.h5", d / "w.pt")
        files["cli.weights.pt"] = hash_pt(d / "w.pt")
        if input_shape is not None:
            tkio.save_model(module, d / "m.h5", optimizer=opt, loss="mse", metrics=["mae"], input_shape=input_shape)
            files["model.h5-legacy"] = hash_h5(d / "m.h5")
            tkio.save_model(module, d / "m.keras", optimizer=opt, loss="mse", metrics=["mae"], input_shape=input_shape)
            files["model.keras"] = hash_keras(d / "m.keras", d)
            _convert(d / "m.h5", d / "m.safetensors")  # full model: the rebuilt model's torch state_dict
            files["cli.model.safetensors"] = hash_safetensors(d / "m.safetensors")
            _convert(d / "m.h5", d / "m.pt")
            files["cli.model.pt"] = hash_pt(d / "m.pt")
        for fmt, entries in files.items():
            for key, digest in entries.items():
                result.setdefault(case, {})[f"{fmt}:{key}"] = digest
    return result


def _diff(expected: dict, got: dict, limit: int = 20) -> list:
    lines = []
    for case in sorted(set(expected) | set(got)):
        e, g = expected.get(case, {}), got.get(case, {})
        for key in sorted(set(e) | set(g)):
            if e.get(key) != g.get(key):
                lines.append(f"  [{case}] {key}\n      expected: {e.get(key, '<absent>')}\n      got:      "
                             f"{g.get(key, '<absent>')}")  # fmt: skip
    return lines[:limit] + ([f"  ... and {len(lines) - limit} more"] if len(lines) > limit else [])


def test_written_files_match_golden_hashes(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = write_and_hash(tmp_path)
    if os.environ.get("TKIO_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"regenerated {GOLDEN} ({sum(len(v) for v in got.values())} entries)")
    assert GOLDEN.exists(), f"{GOLDEN} missing: run TKIO_REGEN_GOLDEN=1 python -m pytest {__file__}"
    expected = json.loads(GOLDEN.read_text())
    diff = _diff(expected, got)
    assert not diff, "written files differ from tests/golden/hashes.json (first differences):\n" + "\n".join(diff)
