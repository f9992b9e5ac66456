"""What a checkpoint file holds, format-neutral: the records every reader gives and every writer takes.

A Keras 3 store also has objects that are not layers (a recurrent layer's ``cell``, the
optimizer): those stay :class:`~torchkeras_io._formats.keras3_store.StoreObject`, the store's own
unit, addressed by path; a layer is put together from them by the reader (and taken apart by the
engine before writing).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from torchkeras_io._checkpoint.training import TrainingRecord
from torchkeras_io._formats.detect import Format


@dataclasses.dataclass
class LayerWeights:
    """One Keras layer's weights, as a file holds them or a writer is to store them.

    ``name``: the Keras layer name (in a legacy file, its group path, which may hold '/').
    ``weights``: lazy tensors (:class:`~torchkeras_io._tensors.Lazy`) in Keras's order, named as
    the file names them. ``extras``: ``{torch name: lazy tensor}`` of torch-only state Keras has no
    variable for (``num_batches_tracked``); a sequence of named lazy tensors (an adapter's
    ``KerasLayer.extras``) is taken as ``{tensor.name: tensor}``. ``attrs``: string attributes the file keeps of the
    layer (ours: ``keras_class``, ``torch_class``; a Keras 3 reader adds ``v3_path``, the layer's
    store path)."""

    name: str
    weights: Sequence = ()
    extras: dict = dataclasses.field(default_factory=dict)
    attrs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.extras, dict):
            self.extras = {e.name: e for e in self.extras}


@dataclasses.dataclass
class Checkpoint:
    """Everything :func:`~torchkeras_io._checkpoint.writer.write_checkpoint` writes to one file.

    ``format``: which layout to write (:class:`~torchkeras_io._formats.detect.Format`). Legacy HDF5 (weights or full model): ``layers`` in ``layer_names`` order, ``top_level`` (the
    model's own variables) and ``attrs`` (root attributes, written first, in order: for a full
    model ``keras_version``, ``backend``, ``model_config`` or ``torch_config``; the writer adds
    ``torchkeras_io_version`` after them). Keras 3 (store, shards, ``.keras``): ``objects``, the store's
    :class:`~torchkeras_io._formats.keras3_store.StoreObject` list, and ``order`` (the layer paths
    in module order, kept as a root attribute); a ``.keras`` archive also has ``config`` (its
    ``config.json``) and ``metadata``. ``training``: the optimizer state, where there is one."""

    format: Format
    layers: Sequence[LayerWeights] = ()
    top_level: Sequence = ()
    attrs: dict = dataclasses.field(default_factory=dict)
    objects: Sequence = ()
    order: Sequence[str] = ()
    config: Optional[dict] = None
    metadata: Optional[dict] = None
    training: Optional[TrainingRecord] = None
