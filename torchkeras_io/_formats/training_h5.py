"""Training state in HDF5, as bytes: the legacy full-model file's and the Keras 3 store's (the
record they make is :class:`torchkeras_io._checkpoint.training.TrainingRecord`).

Legacy (Keras 1 to tf-keras, and Keras 3's ``.h5``): root attribute ``training_config`` (JSON),
group ``optimizer_weights`` (attribute ``weight_names``, one dataset per name). Keras 3: the
store's ``optimizer/vars/0``, ``1``, … (attribute ``name``: the optimizer's); its
``compile_config`` sits in the archive's ``config.json``, outside this file. Both: our
``torch_optimizer`` group (JSON attribute ``record``, one dataset per state tensor), where Keras
never looks.
"""

from __future__ import annotations

import collections.abc
import functools
import json
from typing import Mapping, Optional, Sequence

import h5py
import numpy as np
import torch

from torchkeras_io._formats.hdf5 import DTYPE_ATTR, load_attributes, save_attributes
from torchkeras_io._formats.keras3_store import NAME_ATTR, VARS, read_store
from torchkeras_io._tensors import from_numpy, to_numpy
from torchkeras_io.errors import FileFormatError

TRAINING_CONFIG = "training_config"
OPT_GROUP = "optimizer_weights"
WEIGHT_NAMES = "weight_names"
TORCH_GROUP = "torch_optimizer"
RECORD_ATTR = "record"
KERAS3_OPTIMIZER = "optimizer"  # the optimizer's object path in a Keras 3 store


def _write_tensor(group: h5py.Group, path: str, t: torch.Tensor) -> None:
    array, marker = to_numpy(t.detach().cpu().contiguous())
    dset = group.create_dataset(path, data=np.asarray(array))
    if marker is not None:
        dset.attrs[DTYPE_ATTR] = marker


def _read_dataset(group: h5py.Group, path: str, filepath: str, max_numel: Optional[int] = None) -> torch.Tensor:
    """A numeric dataset as a tensor; ``max_numel`` (the largest weight's size) refuses shapes that
    no optimizer slot can have before anything is read (a file may claim terabytes)."""
    obj = group.get(path, getlink=True)
    if not isinstance(obj, h5py.HardLink):
        raise FileFormatError(f"optimizer dataset '{path}' is missing or not a hard link", filepath=filepath)
    dset = group[path]
    if not isinstance(dset, h5py.Dataset) or dset.dtype.kind not in "fiub" and dset.dtype.itemsize != 2:
        raise FileFormatError(f"optimizer entry '{path}' is not a numeric dataset", filepath=filepath)
    if dset.shape is None or (max_numel is not None and dset.size > max_numel):
        raise FileFormatError(f"optimizer dataset '{path}' has shape {dset.shape}, larger than any weight",
                              filepath=filepath)  # fmt: skip
    marker = dset.attrs.get(DTYPE_ATTR)
    marker = marker.decode() if isinstance(marker, bytes) else marker
    return from_numpy(np.asarray(dset[()]), marker)


class _Datasets(collections.abc.Mapping):
    """The datasets under a group, by path, each read only when called (with its size limit)."""

    def __init__(self, group: h5py.Group, filepath: str) -> None:
        self.group, self.filepath = group, filepath

    def __getitem__(self, path: str):
        # a path the record names but the file lacks fails when read, as a damaged record does
        return functools.partial(_read_dataset, self.group, path, self.filepath)

    def __iter__(self):
        names: list = []
        self.group.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        return iter(names)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def write_torch_optimizer(f: h5py.Group, record: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Our ``torch_optimizer`` group: the record's JSON text and its tensors at their paths."""
    tg = f.create_group(TORCH_GROUP)
    for path, t in tensors.items():
        _write_tensor(tg, path, t)
    tg.attrs[RECORD_ATTR] = record.encode("utf-8")


def read_torch_optimizer(f: h5py.Group, filepath: str) -> Optional[tuple]:
    """(the record's JSON text, None when absent; ``{path: read(max_numel)}``), or None without the group."""
    if TORCH_GROUP not in f:
        return None
    tg = f[TORCH_GROUP]
    return tg.attrs.get(RECORD_ATTR), _Datasets(tg, filepath)


# ------------------------------------------------------------------------------ legacy HDF5
def write_training_config(f: h5py.File, config: dict) -> None:
    f.attrs[TRAINING_CONFIG] = json.dumps(config).encode("utf-8")


def parse_training_config(text: Optional[str], filepath: str) -> Optional[dict]:
    """The ``training_config`` attribute's JSON text (read with the file's other attributes) as a
    dict; None without one."""
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise FileFormatError(f"unreadable 'training_config': {exc}", filepath=filepath) from exc
    if not isinstance(config, dict):
        raise FileFormatError(f"'training_config' is a {type(config).__name__}, not an object", filepath=filepath)
    return config


def write_optimizer_weights(f: h5py.File, variables: Sequence[tuple]) -> None:
    """The ``optimizer_weights`` group: ``[(name, tensor)]`` in order."""
    og = f.create_group(OPT_GROUP)
    save_attributes(og, WEIGHT_NAMES, [name for name, _ in variables])
    for name, t in variables:
        _write_tensor(og, name, t)


def read_optimizer_weights(f: h5py.File, filepath: str) -> list:
    """``[(name, read(max_numel))]`` of the ``optimizer_weights`` group, empty without one."""
    if OPT_GROUP not in f:
        return []
    og = f[OPT_GROUP]
    names = load_attributes(og, WEIGHT_NAMES, filepath) or []
    return [(n, functools.partial(_read_dataset, og, n, filepath)) for n in names]


# ------------------------------------------------------------------------------- Keras 3 store
def write_optimizer_vars(f: h5py.File, name: str, tensors: Sequence[torch.Tensor]) -> None:
    """The store's ``optimizer/vars/<i>`` (attribute ``name``: the optimizer's)."""
    group = f.require_group(f"{KERAS3_OPTIMIZER}/{VARS}")
    group.attrs[NAME_ATTR] = name
    for i, t in enumerate(tensors):
        # Keras 3 keeps no dtype marker here: a bfloat16 slot is written as its raw 16 bits
        array, _ = to_numpy(t.detach().cpu().contiguous())
        group.create_dataset(str(i), data=np.asarray(array))


def _checked(t: torch.Tensor, name: str, filepath: str, max_numel: Optional[int]) -> torch.Tensor:
    if t.dtype.is_complex:
        raise FileFormatError(f"optimizer entry '{name}' is not a numeric dataset", filepath=filepath)
    if max_numel is not None and t.numel() > max_numel:
        raise FileFormatError(f"optimizer dataset '{name}' has shape {tuple(t.shape)}, larger than any weight",
                              filepath=filepath)  # fmt: skip
    return t


def read_optimizer_vars(store: h5py.File, filepath: str) -> list:
    """``[(name, read(max_numel))]`` of the store's ``optimizer/vars``, read now. Keras 3 numbers
    them; they are named ``<optimizer>/iteration``, ``<optimizer>/learning_rate``, then
    ``<optimizer>/slot_<i>``."""
    opt = read_store(store, filepath).get(KERAS3_OPTIMIZER)
    if opt is None or not opt.vars:
        return []
    prefix = opt.name or KERAS3_OPTIMIZER
    names = [f"{prefix}/iteration", f"{prefix}/learning_rate"] + [f"{prefix}/slot_{i}" for i in range(2, len(opt.vars))]
    return [(name, functools.partial(_checked, lazy.read(), name, filepath)) for name, lazy in zip(names, opt.vars)]
