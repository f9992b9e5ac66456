"""One writer for every Keras checkpoint format: a :class:`Checkpoint` record in, a complete file out.

Every write is atomic (:mod:`torchkeras_io._formats.atomic`): the file appears whole at its path
or not at all, and a failed write leaves the previous file as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Optional

import h5py

from torchkeras_io._checkpoint.progress import progress_bar, tensor_bytes
from torchkeras_io._checkpoint.records import Checkpoint
from torchkeras_io._checkpoint.training import write_training
from torchkeras_io._formats.atomic import atomic_write_path
from torchkeras_io._formats.detect import Format
from torchkeras_io._formats.keras3_store import write_sharded, write_store
from torchkeras_io._formats.keras_archive import WEIGHTS, write_archive
from torchkeras_io._formats.legacy_h5 import MODEL_WEIGHTS, write_weights_group
from torchkeras_io._version import __version__

VERSION_ATTR = "torchkeras_io_version"


def write_checkpoint(filepath: os.PathLike | str, checkpoint: Checkpoint, *, overwrite: bool = True,
                     compression: Optional[str] = None, gzip_level: Optional[int] = None,
                     progress: Optional[bool] = None, desc: str = "save_weights",
                     max_shard_bytes: Optional[int] = None) -> None:  # fmt: skip
    """Write ``checkpoint`` to ``filepath`` in ``checkpoint.format``.

    :data:`Format.LEGACY_WEIGHTS`: the weights group at the root; :data:`Format.LEGACY_MODEL`:
    ``checkpoint.attrs`` at the root, the weights group in ``model_weights``, then the training
    state. ``compression`` (None, "gzip" at ``gzip_level``, "lzf") and ``progress`` (a tqdm bar
    named ``desc``: True, False, or None for one from 1 GiB on a terminal) apply to these two.
    :data:`Format.KERAS3_WEIGHTS`: ``attrs`` and the variable store; :data:`Format.SHARDED`: the store in shards
    of at most ``max_shard_bytes`` and the ``.weights.json`` index at ``filepath``;
    :data:`Format.KERAS`: the ``.keras`` archive, the training state's ``compile_config`` added to
    ``checkpoint.config``. ``overwrite=False`` refuses an existing file
    (:class:`~torchkeras_io.errors.CheckpointExistsError`)."""
    filepath = os.fspath(filepath)
    format = checkpoint.format
    if format in (Format.LEGACY_WEIGHTS, Format.LEGACY_MODEL):
        _write_legacy(filepath, checkpoint, format, overwrite, compression, gzip_level, progress, desc)
    elif format == Format.KERAS3_WEIGHTS:
        with atomic_write_path(filepath, overwrite=overwrite) as tmp, h5py.File(tmp, "w") as f:
            for key, value in checkpoint.attrs.items():
                f.attrs[key] = value
            f.attrs[VERSION_ATTR] = __version__
            write_store(f, checkpoint.objects, checkpoint.order)
    elif format == Format.SHARDED:
        write_sharded(filepath, checkpoint.objects, checkpoint.order, max_shard_bytes, overwrite)
    elif format == Format.KERAS:
        _write_archive(filepath, checkpoint, overwrite)
    else:
        raise ValueError(f"no writer for {format}")  # pragma: no cover - the flat formats are the CLI's


def _write_legacy(filepath: str, checkpoint: Checkpoint, format: Format, overwrite: bool, compression, gzip_level,
                  progress, desc: str) -> None:  # fmt: skip
    bar = progress_bar(progress, tensor_bytes(checkpoint.layers, checkpoint.top_level), desc)
    with contextlib.closing(bar), atomic_write_path(filepath, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, value in checkpoint.attrs.items():
                f.attrs[key] = value
            f.attrs[VERSION_ATTR] = __version__
            group = f if format == Format.LEGACY_WEIGHTS else f.create_group(MODEL_WEIGHTS)
            write_weights_group(group, checkpoint.layers, checkpoint.top_level, compression=compression,
                                gzip_level=gzip_level, progress=bar.update)  # fmt: skip
            if checkpoint.training is not None:
                write_training(f, checkpoint.training)


def _write_archive(filepath: str, checkpoint: Checkpoint, overwrite: bool) -> None:
    config = dict(checkpoint.config or {})
    training = checkpoint.training
    if training is not None and training.config is not None:
        config["compile_config"] = training.config
    with (
        atomic_write_path(filepath, overwrite=overwrite) as tmp,
        tempfile.TemporaryDirectory(dir=os.path.dirname(tmp)) as tmpdir,
    ):
        h5path = os.path.join(tmpdir, WEIGHTS)
        with h5py.File(h5path, "w") as f:
            write_store(f, checkpoint.objects, checkpoint.order)
            if training is not None:
                write_training(f, training)
        write_archive(tmp, config, checkpoint.metadata or {}, h5path)
