"""save_weights / load_weights: any nn.Module <-> a Keras weights file (every Keras layout)."""

from __future__ import annotations

import os
from typing import Optional, Union

import torch
from torch import nn

from torchkeras_io._engine import model_io
from torchkeras_io._engine.plan import LayerNames
from torchkeras_io._engine.transfer import LoadReport, Mismatch

__all__ = ["LoadReport", "Mismatch", "load_weights", "save_weights"]

Device = Union[str, torch.device, None]


def save_weights(
    module: nn.Module,
    filepath: Union[str, os.PathLike],
    *,
    overwrite: bool = True,
    layer_names: LayerNames = None,
    format: Optional[str] = None,
    max_shard_size: Optional[float] = None,
    compression: Optional[str] = None,
    compression_opts: Optional[int] = None,
    progress: Optional[bool] = None,
) -> None:
    """Save the parameters and buffers of ``module`` as a Keras weights file.

    The layout follows the name as in Keras 3: ``*.weights.h5`` is Keras 3's variable store
    (``layers/<snake_class>/vars/<i>``), any other name the legacy HDF5 layout; ``format="keras"``
    or ``format="h5"`` chooses explicitly. ``*.weights.json`` (or ``max_shard_size``, in GB, as in
    Keras 3) writes Keras 3's sharded form: the JSON index and ``<stem>_00000.weights.h5``, ….

    Each module that owns tensors becomes a Keras layer named by its module path (or by
    ``layer_names``: a dict ``{module_path: keras_name}`` or a callable). Known module types use
    Keras's own layouts, so ``keras_model.load_weights(filepath)`` reads the file. The write is
    atomic; ``overwrite=False`` on an existing path raises ``FileExistsError``.
    ``compression`` (legacy layout): None, ``"gzip"`` (level ``compression_opts``, 0-9, default 4)
    or ``"lzf"``, HDF5 filters every Keras reads. ``progress`` (legacy layout): a tqdm bar on
    stderr (True; needs tqdm), none (False), or one from 1 GiB when stderr is a terminal (None).
    """
    model_io.save_weights(
        module,
        filepath,
        overwrite=overwrite,
        layer_names=layer_names,
        format=format,
        max_shard_size=max_shard_size,
        compression=compression,
        compression_opts=compression_opts,
        progress=progress,
    )


def load_weights(
    module: nn.Module,
    filepath: Union[str, os.PathLike],
    *,
    by_name: bool = False,
    skip_mismatch: bool = False,
    reshape: bool = False,
    device: Device = None,
    layer_names: LayerNames = None,
    allow_nonfinite: bool = True,
    progress: Optional[bool] = None,
    assign: bool = False,
) -> LoadReport:
    """Load a Keras weights file (or a model file's weights) into ``module``.

    Legacy HDF5, Keras 3 ``.weights.h5``, ``.keras`` archives and sharded ``.weights.json`` are told
    apart by their bytes. In a Keras 3 store, layers are matched by Keras 3's paths
    (``layers/dense_1``) when the module's layers give the same ones, else in the file's order
    (ours) or by the ``vars`` ``name`` attribute with ``by_name=True``.

    ``by_name=False`` pairs the module's layers with the file's layers that have weights, in
    order (Keras's topological loading); ``by_name=True`` pairs them by Keras layer name and
    leaves the others untouched. A layer whose weight count or shapes differ raises
    :class:`WeightMismatchError`, or with ``skip_mismatch=True`` is skipped with a warning;
    ``reshape=True`` reshapes a weight whose element count matches. Every shape is checked before
    anything is written, so a failed load leaves the module as it was. ``device`` moves the module
    first; otherwise each tensor lands on the device its parameter lives on. NaN and Inf load as
    they are; ``allow_nonfinite=False`` refuses them with a :class:`FileFormatError` naming the
    layer and weight. A failure while reading data (a corrupt or truncated file) restores every
    tensor already written: the module is left as it was. ``progress``: as for :func:`save_weights`.

    ``assign=True`` replaces the module's tensors with new ones made from the file, as
    ``load_state_dict(assign=True)`` does, instead of copying into them: a module built on the
    ``meta`` device (``with torch.device("meta"): module = Net()``) is materialised straight from
    the file, on ``device`` (default: CPU), with one copy of the model in memory in all.
    Parameters stay parameters (``requires_grad`` kept), buffers buffers, tied tensors tied; the
    swap happens once every read has succeeded, so a failed load still leaves the module as it
    was. A meta tensor the file gives no value to is an error before anything is read; loading
    into a module with meta tensors needs ``assign=True``.
    """
    return model_io.load_weights(
        module,
        filepath,
        by_name=by_name,
        skip_mismatch=skip_mismatch,
        reshape=reshape,
        device=device,
        layer_names=layer_names,
        allow_nonfinite=allow_nonfinite,
        progress=progress,
        assign=assign,
    )
