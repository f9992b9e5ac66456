"""torch modules -> Keras: ``to_json`` / ``to_yaml`` / ``save_model``."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from torch import nn

from torchkeras_io._engine import model_io
from torchkeras_io.training import Model

__all__ = ["save_model", "to_json", "to_yaml"]

InputShape = Union[tuple, list, None]
BatchAxis = Union[int, Sequence[int]]


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside a :class:`torchkeras_io.Model`, or ``model`` itself."""
    return model.module if isinstance(model, Model) else model


def to_json(module: nn.Module, *, input_shape: InputShape = None, channels_last: bool = False,
            batch_axis: BatchAxis = 0) -> str:  # fmt: skip
    """The Keras model config (JSON) of ``module``, which tf-keras 2.x and Keras 3 rebuild.

    ``input_shape``: per-sample shape (no batch axis), a list of them for several inputs; needed
    unless the first layer fixes it. The Keras model takes the module's own input layout
    (NCHW stays NCHW); ``channels_last=True`` makes it take and return channels-last tensors.
    ``batch_axis``: where the batch is in each torch input (1 for sequence-first ``(time, batch,
    ...)`` models; one per input or one for all). Keras tensors always have the batch first, so
    the Keras model takes and returns batch-first tensors, the other axes in torch's order.
    """
    return model_io.to_json(
        _unwrap(module), input_shape=input_shape, channels_last=channels_last, batch_axis=batch_axis
    )


def to_yaml(module: nn.Module, *, input_shape: InputShape = None, channels_last: bool = False,
            batch_axis: BatchAxis = 0) -> str:  # fmt: skip
    """As :func:`to_json`, in YAML (needs PyYAML)."""
    return model_io.to_yaml(
        _unwrap(module), input_shape=input_shape, channels_last=channels_last, batch_axis=batch_axis
    )


def save_model(model: nn.Module, filepath: Union[str, os.PathLike], *, optimizer=None, loss=None, metrics=None,
               overwrite: bool = True, include_optimizer: bool = True, input_shape: InputShape = None,
               channels_last: bool = False, scheduler=None, batch_axis: BatchAxis = 0,
               format: Optional[str] = None, compression: Optional[str] = None,
               compression_opts: Optional[int] = None, progress: Optional[bool] = None) -> None:  # fmt: skip
    """Save ``model`` as a Keras model file that ``keras.models.load_model`` opens.

    The format follows the name as in Keras 3: ``*.keras`` is Keras 3's ZIP archive (which Keras 3
    loads; tf-keras does not), any other name the legacy full-model HDF5 (which both load);
    ``format="keras"`` or ``format="h5"`` chooses explicitly.

    With an ``optimizer`` (a ``torch.optim`` SGD, Adam, AdamW, RMSprop, Adagrad, Adadelta, Adamax or
    NAdam; default: ``model.optimizer`` of a :class:`Model`), ``loss`` and ``metrics`` (Keras names),
    the file also holds Keras's ``training_config`` and ``optimizer_weights`` (tf-keras 2.11+ layout,
    so Keras compiles and resumes from it) and a torch-side record from which
    :func:`torchkeras_io.load_model` restores the optimizer (and a ``scheduler``) bit for bit.
    ``compression``, ``compression_opts``, ``progress`` (HDF5 format): as for :func:`save_weights`.

    Layer names with '/' (tf-keras's, as in DenseNet121's ``conv1/conv``) are kept in the HDF5
    format, which tf-keras reads; Keras 3 forbids them, so a ``.keras`` file names those layers
    with '_' for '/' (``conv1_conv``; numbered ``_1``, … where that name is taken), in its config
    and its weights store alike.
    """
    if isinstance(model, Model):  # its training setup is the default for what the call leaves out
        optimizer = model.optimizer if optimizer is None else optimizer
        loss = model.loss if loss is None else loss
        metrics = model.metrics if metrics is None else metrics
    model_io.save_model(_unwrap(model), filepath, optimizer=optimizer, loss=loss, metrics=metrics, overwrite=overwrite,
                        include_optimizer=include_optimizer, input_shape=input_shape, channels_last=channels_last,
                        scheduler=scheduler, batch_axis=batch_axis, format=format, compression=compression,
                        compression_opts=compression_opts, progress=progress)  # fmt: skip
