"""One reader protocol for every Keras checkpoint format, and the one place that picks the reader.

:func:`open_checkpoint` tells the format by the file's bytes, never its name, and returns a
:class:`CheckpointReader`: :class:`LegacyH5Reader` for the legacy HDF5 layout (weights-only or
full model), :class:`Keras3Reader` for Keras 3's variable store, alone (``.weights.h5``), in
shards (``.weights.json``) or inside a ``.keras`` archive. Readers give bytes as records
(:class:`~torchkeras_io._checkpoint.records.LayerWeights` of lazy tensors); which file layer goes
to which module layer (by order, by name, by Keras 3 store path) is the engine's
(:mod:`torchkeras_io._engine.transfer`).
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
from typing import Callable, Optional, Sequence

import h5py

from torchkeras_io._checkpoint.records import LayerWeights
from torchkeras_io._checkpoint.training import TrainingRecord, read_h5_training, read_keras3_training
from torchkeras_io._formats.detect import Format, hdf5_format, sniff
from torchkeras_io._formats.hdf5 import h5_errors, open_readonly, read_str_attr
from torchkeras_io._formats.hdf5_io import RawFile
from torchkeras_io._formats.keras3_paths import infer_groups, layer_paths, natural
from torchkeras_io._formats.keras3_store import ORDER_ATTR, read_sharded_index, read_store
from torchkeras_io._formats.keras_archive import CONFIG, METADATA, WEIGHTS, KerasArchive
from torchkeras_io._formats.legacy_h5 import (
    TOP_LEVEL,
    ModelFileInfo,
    find_weights_group,
    layer_names,
    model_file_info,
    read_layer,
)
from torchkeras_io.errors import FileFormatError

#: how a Keras model config places its layers in a Keras 3 store: ``[(store path, layer name)]``
ConfigLayers = Callable[[dict], Sequence[tuple]]


class CheckpointReader(abc.ABC):
    """Read access to one checkpoint file, whatever its format.

    Call sequence::

        with open_checkpoint(path) as reader:         # 1. open: format told by bytes, structure checked
            reader.format, reader.keras_version       # 2. what wrote it (and reader.backend)
            for name in reader.layer_names:           # 3. the layers, in the file's order
                layer = reader.layer(name)            #    LayerWeights of lazy tensors: nothing read yet
            top = reader.top_level()                  # 4. the model's own variables, or None
            reader.model_config                       # 5. attributes: model, training, torch configs
            record = reader.training()                # 6. the optimizer state, or None
            tensor = layer.weights[0].read()          # 7. tensors, read on demand while open
        # 8. close (the with block): lazy tensors of the file can no longer be read

    Steps 3 to 7 may come in any order and any number of times; every tensor is read from the
    file when asked for (``Lazy.read`` / ``read_into``), checked against the file's size first
    where the layout allows. Every error on a bad file is a ``FileFormatError`` naming the file
    (and the layer and weight where one is involved). A Keras 3 store addresses its layers by
    path: ``store`` is its ``{path: StoreObject}`` (None for a legacy file), and
    :meth:`Keras3Reader.layers_by_path` its layers by path.
    """

    filepath: str
    format: Format
    keras_version: str  # "1" when a legacy file does not say
    backend: Optional[str]
    layer_names: list
    store: Optional[dict] = None

    @abc.abstractmethod
    def layer(self, name: str) -> LayerWeights:
        """The layer ``name`` (one of :attr:`layer_names`), its tensors lazy."""

    @abc.abstractmethod
    def top_level(self) -> Optional[LayerWeights]:
        """The variables of the model itself (not of a layer), or None when the file has none."""

    @property
    @abc.abstractmethod
    def model_config(self):
        """The model's Keras config: JSON text (legacy full model), a dict (``.keras``), else None."""

    @property
    @abc.abstractmethod
    def training_config(self):
        """tf-keras's ``training_config`` (JSON text), Keras 3's ``compile_config`` (a dict), or None."""

    @property
    def torch_config(self) -> Optional[str]:
        """Our torch-side record (JSON text) of a model Keras cannot express, or None."""
        return None

    @abc.abstractmethod
    def training(self) -> Optional[TrainingRecord]:
        """The training state (tensors read on demand, while open), or None for a weights file."""

    @abc.abstractmethod
    def close(self) -> None:
        """Let go of the file(s); lazy tensors of the file can no longer be read."""

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LegacyH5Reader(CheckpointReader):
    """The legacy-HDF5 weights group of a weights-only or full-model file (:mod:`.legacy_h5`).

    ``file`` is the open h5py file and ``group`` its weights group (the root, or ``model_weights``)."""

    def __init__(self, filepath: os.PathLike | str, file: Optional[h5py.File] = None) -> None:
        """``file``: the same file already opened by :func:`open_checkpoint` (the reader then owns it)."""
        self.filepath = os.fspath(filepath)
        self.file = file if file is not None else open_readonly(self.filepath)
        try:
            self._raw = RawFile.of(self.file) if self._plain() else None
            self.group = find_weights_group(self.file, self.filepath)
            self.format = Format.LEGACY_WEIGHTS if self.group is self.file else Format.LEGACY_MODEL
            self.keras_version = read_str_attr(self.group, "keras_version", self.filepath) or "1"
            self.backend = read_str_attr(self.group, "backend", self.filepath)
            self.layer_names = layer_names(self.group, self.filepath)
        except BaseException:
            self.file.close()
            raise
        self._attributes: Optional[ModelFileInfo] = None

    def _plain(self) -> bool:
        """True when the file starts with its superblock: HDF5 addresses are then file offsets."""
        try:
            return self.file.userblock_size == 0
        except (OSError, RuntimeError, ValueError):
            return False

    def layer(self, name: str) -> LayerWeights:
        return LayerWeights(name, *read_layer(self.file, self.group, name, self.filepath, self._raw))

    def top_level(self) -> Optional[LayerWeights]:
        if TOP_LEVEL not in self.group or TOP_LEVEL in self.layer_names:
            return None
        return self.layer(TOP_LEVEL)

    def attributes(self) -> ModelFileInfo:
        """The root's JSON attributes and writer version (read once, size-checked)."""
        if self._attributes is None:
            with h5_errors(self.filepath):
                self._attributes = model_file_info(self.file, self.filepath)
        return self._attributes

    @property
    def model_config(self) -> Optional[str]:
        return self.attributes().model_config

    @property
    def training_config(self) -> Optional[str]:
        return self.attributes().training_config

    @property
    def torch_config(self) -> Optional[str]:
        return self.attributes().torch_config

    def training(self) -> Optional[TrainingRecord]:
        if self.format != Format.LEGACY_MODEL:
            return None
        return read_h5_training(self.file, self.filepath, self.training_config)

    def close(self) -> None:
        self.file.close()


class Keras3Reader(CheckpointReader):
    """A Keras 3 variable store, its layers in the legacy weight order.

    ``store``: the store's ``{path: StoreObject}``; :meth:`layers_by_path`: ``{layer path:
    LayerWeights}`` in the file's order (our files record it; else Keras's numbering), each layer's weights the
    concatenation of its sub-objects' variables (:mod:`.keras3_paths`), its path in
    ``attrs["v3_path"]``. A layer is named by ``names`` (from the archive's config), else by its
    ``vars`` ``name`` attribute, else by its path; a name that several layers share is no name,
    and those layers go by their paths (:meth:`named`).

    ``files`` is empty for a ``.keras`` archive without ``model.weights.h5``, opened for its
    config alone (``open_checkpoint(..., weights_optional=True)``): a reader of no layers.
    ``metadata``: the archive's ``metadata.json`` as written (``{}`` without one)."""

    def __init__(self, filepath: str, files: Sequence[h5py.File], *, format: Format,
                 names: Optional[dict] = None, order: Sequence[str] = (), keras_version: str = "3",
                 config: Optional[dict] = None, closers: Sequence = (),
                 metadata: Optional[dict] = None) -> None:  # fmt: skip
        self.filepath = filepath
        self.format = format
        self.keras_version = keras_version
        self.backend = None
        self.files = list(files)
        self.config = config
        self.metadata = metadata if metadata is not None else {}
        self._closers = list(closers)
        order = list(order)
        self.store = read_store(self.files, filepath)
        for f in self.files:
            if ORDER_ATTR in f.attrs and not order:
                try:
                    order = json.loads(f.attrs[ORDER_ATTR])
                except (TypeError, ValueError) as exc:
                    raise FileFormatError(f"unreadable attribute '{ORDER_ATTR}': {exc}", filepath=filepath) from exc
        paths = sorted(layer_paths(self.store), key=natural)
        if isinstance(order, list) and set(order) >= set(paths) and all(isinstance(p, str) for p in order):
            paths = [p for p in order if p in set(paths)]
        self._layers = {p: self._assemble(p, (names or {}).get(p)) for p in paths}
        self._by_name = self.named(paths)
        self.layer_names = list(self._by_name)

    def _assemble(self, path: str, name: Optional[str]) -> LayerWeights:
        own = self.store.get(path)
        prefix = f"{path}/"
        present = {"" if p == path else p[len(prefix) :] for p, o in self.store.items()
                   if o.vars and (p == path or p.startswith(prefix)) and "/layers/" not in "/" + p[len(prefix):]}  # fmt: skip
        weights = []
        if present:
            for g in infer_groups(present):
                obj = self.store[f"{path}/{g}" if g else path]
                weights += [w.renamed(f"{g}/{w.name}" if g else w.name) for w in obj.vars]
        label = name or (own.name if own is not None else None) or path
        return LayerWeights(label, weights, dict(own.extras) if own is not None else {}, {"v3_path": path})

    def layers_by_path(self) -> dict:
        """``{store path: layer}`` of every layer, in the file's order."""
        return dict(self._layers)

    def named(self, paths: Sequence[str]) -> dict:
        """``{name: layer}`` of the layers at ``paths``, in that order; layers whose name is shared
        are renamed to their paths."""
        count: dict = {}
        for p in paths:
            count[self._layers[p].name] = count.get(self._layers[p].name, 0) + 1
        out = {}
        for p in paths:
            layer = self._layers[p]
            if count[layer.name] > 1:
                layer.name = p
            out[layer.name] = layer
        return out

    def layer(self, name: str) -> LayerWeights:
        return self._by_name[name]

    def top_level(self) -> Optional[LayerWeights]:
        root = self.store.get("")
        if root is None or not root.vars:
            return None
        return LayerWeights(TOP_LEVEL, list(root.vars), dict(root.extras), {})

    @property
    def model_config(self) -> Optional[dict]:
        return self.config

    @property
    def training_config(self) -> Optional[dict]:
        compile_config = self.config.get("compile_config") if self.config is not None else None
        return compile_config if isinstance(compile_config, dict) else None

    def training(self) -> Optional[TrainingRecord]:
        if self.format != Format.KERAS or not self.files:
            return None
        return read_keras3_training(self.files[0], self.filepath, self.training_config)

    def close(self) -> None:
        for c in reversed(self._closers):
            with contextlib.suppress(Exception):
                c.close()
        self._closers = []


def open_checkpoint(
    filepath: os.PathLike | str, *, config_layers: Optional[ConfigLayers] = None, weights_optional: bool = False
) -> CheckpointReader:
    """A reader for any Keras checkpoint file, told apart by its bytes, not its name: legacy HDF5
    (weights-only or full model), a Keras 3 ``.weights.h5`` store, a ``.keras`` ZIP (its
    ``model.weights.h5``), or a sharded ``.weights.json`` index.

    ``config_layers``: where a Keras model config puts its layers in the store, for naming the
    layers of a ``.keras`` archive after its ``config.json`` (without it, they go by the names
    stored with their variables, else by path). ``weights_optional``: a ``.keras`` archive
    without ``model.weights.h5`` (Keras's npz or sharded weights, which are not read) opens as its
    config with no layers and no ``files``, instead of being refused; its ``config.json`` is then
    required."""
    filepath = os.fspath(filepath)
    kind = sniff(filepath)
    if kind == "zip":
        archive = KerasArchive(filepath)
        try:
            if weights_optional and not archive.has(WEIGHTS):
                config = archive.json(CONFIG)
                metadata = archive.json(METADATA) if archive.has(METADATA) else {}
                return Keras3Reader(filepath, [], format=Format.KERAS, config=config, metadata=metadata,
                                    keras_version=str(metadata.get("keras_version", "3")), closers=[archive])  # fmt: skip
            metadata = archive.json(METADATA) if archive.has(METADATA) else {}
            config = archive.json(CONFIG) if archive.has(CONFIG) else None
            entries = list(config_layers(config)) if config is not None and config_layers is not None else []
            return Keras3Reader(filepath, [archive.weights()], format=Format.KERAS,
                                names={p: n for p, n in entries if isinstance(n, str)},
                                order=[p for p, _ in entries], keras_version=str(metadata.get("keras_version", "3")),
                                config=config, closers=[archive], metadata=metadata)  # fmt: skip
        except BaseException:
            archive.close()
            raise
    if kind == "json":
        opened = []
        try:
            for shard in read_sharded_index(filepath):
                opened.append(_open_shard(shard, filepath))
            return Keras3Reader(filepath, opened, format=Format.SHARDED, closers=opened)
        except BaseException:
            for f in opened:
                f.close()
            raise
    if kind == "hdf5":
        f = open_readonly(filepath)
        try:
            v3 = hdf5_format(f) == Format.KERAS3_WEIGHTS
        except BaseException:
            f.close()
            raise
        try:
            if v3:
                return Keras3Reader(filepath, [f], format=Format.KERAS3_WEIGHTS, closers=[f])
            return LegacyH5Reader(filepath, f)  # legacy layout, or its error for a file that is none of these
        except BaseException:
            f.close()
            raise
    return LegacyH5Reader(filepath)


def _open_shard(shard: str, index: str) -> h5py.File:
    try:
        return open_readonly(shard)
    except FileNotFoundError as exc:
        raise FileFormatError(f"shard '{os.path.basename(shard)}' of the index is missing", filepath=index) from exc
