"""The training state of a Keras file, format-neutral: what :mod:`torchkeras_io._engine.optim` makes
from a torch optimizer and restores one from, and what :func:`write_training` and the readers
below map onto a file's bytes (:mod:`torchkeras_io._formats.training_h5`) without knowing any
optimizer: the legacy HDF5 layout (root attribute ``training_config``, groups
``/optimizer_weights`` and ``/torch_optimizer``) and the Keras 3 one (``compile_config`` in the
archive's ``config.json``, the store's ``optimizer/vars``, our ``/torch_optimizer``). Readers give
tensors to read on demand, so that the optimizer side can refuse sizes no slot can have first.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Sequence, Union

import torch

from torchkeras_io._formats import training_h5
from torchkeras_io.errors import TorchKerasIOError

#: a tensor being written, or one in a file being read: ``read(max_numel)`` refuses a dataset of
#: more than ``max_numel`` elements before reading it (a file may claim terabytes)
StoredTensor = Union[torch.Tensor, Callable[[Optional[int]], torch.Tensor]]

#: the two ways Keras keeps training state: ``training_config`` + ``optimizer_weights`` (Keras 1,
#: Keras 2, tf-keras; also Keras 3's legacy ``.h5``), or ``compile_config`` + ``optimizer/vars``
TF_KERAS, KERAS3 = "tf_keras", "keras3"


def tensor_of(value: StoredTensor, max_numel: Optional[int] = None) -> torch.Tensor:
    """The tensor itself: read from the file when it is one there."""
    return value if isinstance(value, torch.Tensor) else value(max_numel)


@dataclasses.dataclass
class OptimizerVariable:
    """One variable of the Keras optimizer, in the order Keras keeps them (the iteration count
    first). ``name`` is Keras's name for it as the dialect has one: tf-keras's
    ``Adam/m/dense/kernel:0`` (whatever older Keras versions stored, when read), or for Keras 3,
    whose store numbers them, ``<optimizer>/iteration``, ``<optimizer>/learning_rate`` and
    ``<optimizer>/slot_<i>``."""

    name: str
    value: StoredTensor


@dataclasses.dataclass
class TorchOptimizerRecord:
    """Our exact-resume record of the torch optimizer (and LR scheduler), beside Keras's state.

    ``record`` is its JSON text (``class_name``, ``param_groups``, ``state``: per parameter and
    state key either ``{"value": ...}`` or ``{"datasets": [path, ...], "keras_layout": bool}``,
    optional ``scheduler``), None when a file has the record's group but not the text;
    ``tensors`` maps those dataset paths to tensors (a reader's mapping reads each on demand)."""

    record: Optional[Union[str, bytes]]
    tensors: Mapping[str, StoredTensor]


@dataclasses.dataclass
class TrainingRecord:
    """What a Keras file keeps of training, in the dialect of the file.

    ``config``: tf-keras's ``training_config`` (``loss``, ``metrics``, ``optimizer_config``...)
    for :data:`TF_KERAS`, Keras 3's ``compile_config`` (``optimizer``, ``loss``, ``metrics``...)
    for :data:`KERAS3`; None when the file has none. ``variables``: the Keras optimizer's state,
    empty when the file has none; ``variables_error`` the error a reader met reading them (the
    optimizer side reports it as Keras does, and still restores the model). ``torch``: the
    exact-resume record, when the file has one (a file written by Keras has not)."""

    dialect: str
    config: Optional[dict] = None
    variables: Sequence[OptimizerVariable] = ()
    torch: Optional[TorchOptimizerRecord] = None
    variables_error: Optional[Exception] = None


def write_training(f, record: TrainingRecord) -> None:
    """Write ``record`` into an open HDF5 file of its dialect: a legacy full-model file, or the
    Keras 3 store of a ``.keras`` archive (whose ``config.json`` takes ``record.config`` as its
    ``compile_config``: the archive writer's job)."""
    variables = [(v.name, tensor_of(v.value)) for v in record.variables]
    if record.dialect == TF_KERAS:
        if record.config is not None:
            training_h5.write_training_config(f, record.config)
        if variables:
            training_h5.write_optimizer_weights(f, variables)
    elif variables:
        # Keras 3 names the group by the optimizer, whose name prefixes its variables' names
        training_h5.write_optimizer_vars(f, variables[0][0].split("/", 1)[0], [t for _, t in variables])
    if record.torch is not None:
        tensors = {path: tensor_of(t) for path, t in record.torch.tensors.items()}
        training_h5.write_torch_optimizer(f, record.torch.record, tensors)


#: what reading ``optimizer_weights`` may raise on a damaged file: Keras then loads the model
#: without its optimizer state, and so do we (:attr:`TrainingRecord.variables_error`)
_VARIABLE_ERRORS = (TorchKerasIOError, KeyError, TypeError, ValueError, OSError, AttributeError, IndexError,
                    RuntimeError)  # fmt: skip


def _torch_record(found: Optional[tuple]) -> Optional[TorchOptimizerRecord]:
    return None if found is None else TorchOptimizerRecord(*found)


def read_h5_training(f, filepath: str, training_config: Optional[str]) -> TrainingRecord:
    """The record of an open legacy full-model file, whose ``training_config`` text (read with the
    file's other attributes) is given. Its tensors are read on demand: keep ``f`` open meanwhile."""
    record = TrainingRecord(TF_KERAS, training_h5.parse_training_config(training_config, filepath), [],
                            _torch_record(training_h5.read_torch_optimizer(f, filepath)))  # fmt: skip
    try:
        record.variables = [OptimizerVariable(n, read) for n, read in training_h5.read_optimizer_weights(f, filepath)]
    except _VARIABLE_ERRORS as exc:
        record.variables_error = exc
    return record


def read_keras3_training(store, filepath: str, compile_config: Optional[dict]) -> TrainingRecord:
    """The record of an open Keras 3 store and its archive's ``compile_config``."""
    variables = [OptimizerVariable(n, read) for n, read in training_h5.read_optimizer_vars(store, filepath)]
    return TrainingRecord(
        KERAS3, compile_config, variables, _torch_record(training_h5.read_torch_optimizer(store, filepath))
    )


__all__ = ["KERAS3", "TF_KERAS", "OptimizerVariable", "StoredTensor", "TorchOptimizerRecord", "TrainingRecord",
           "read_h5_training", "read_keras3_training", "tensor_of", "write_training"]  # fmt: skip
