"""The one load pipeline and the one save pipeline, for every Keras file format.

Load (:func:`load_model`, :func:`load_weights`)::

    open_checkpoint(path)            once: config, versions, layers, training state
    -> build_module(config)          a model file: the graph its config describes
    -> plan(module) + transfer       pair, fit and read the weights into the module
    -> restore(training record)      a model file, compile=True: optimizer, loss, metrics

Save (:func:`save_model`, :func:`save_weights`, :func:`to_json`)::

    export_config(module)            once, in tf-keras's rebuild order (Keras 3: again, in its own)
    -> records for the config        a Keras layer's weights, or the Keras 3 store's objects
    -> prove_rebuilds                never write a file that does not load
    -> training record               optimizer, loss, metrics
    -> write_checkpoint              atomic

The format shows only in the reader and the writer, and in the two dialects a config and a
training record come in.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Optional, Union

import torch
from torch import nn

from torchkeras_io._checkpoint.progress import check_compression
from torchkeras_io._checkpoint.reader import CheckpointReader, open_checkpoint
from torchkeras_io._checkpoint.records import Checkpoint, LayerWeights
from torchkeras_io._checkpoint.training import KERAS3, TF_KERAS
from torchkeras_io._checkpoint.writer import write_checkpoint
from torchkeras_io._engine.model_config import (
    KERAS3_VERSION,
    BatchAxis,
    InputShape,
    dialect,
    keras3_config,
    keras_config,
    legacy_layers,
    module_objects,
    store_objects,
    warn_h5_limits,
)
from torchkeras_io._engine.optim import Restored, restore_training, training_record
from torchkeras_io._engine.plan import LayerNames, plan
from torchkeras_io._engine.rebuild import build_module, module_from_record, prove_rebuilds
from torchkeras_io._engine.transfer import (
    Assign,
    LoadReport,
    MetaTensorsLeft,
    check_keras_pairing,
    check_module,
    load_layers,
    store_path_order,
)
from torchkeras_io._formats.detect import Format, chosen_format
from torchkeras_io._formats.hdf5 import h5_errors
from torchkeras_io._formats.keras_archive import CONFIG, metadata
from torchkeras_io._formats.legacy_h5 import KERAS_VERSION, TOP_LEVEL
from torchkeras_io._graph.graph import KerasGraph
from torchkeras_io._keras.keras3 import layer_entries, to_keras3
from torchkeras_io._layers.base import FileInfo
from torchkeras_io.errors import (
    FileFormatError,
    TorchKerasIOError,
    TorchKerasIOWarning,
    UnsupportedLayerError,
    WeightMismatchError,
)
from torchkeras_io.registration import registered_name

#: the backend our full-model files name: their weights follow tf-keras's layouts
SAVED_BACKEND = "tensorflow"


# ======================================================================================== load
@dataclasses.dataclass
class LoadedModel:
    """A model file as torch objects: the network, and what the file says of its training."""

    module: nn.Module
    training: Optional[Restored] = None


def load_model(
    filepath: Union[str, os.PathLike],
    *,
    custom_objects=None,
    compile: bool = True,
    device=None,
    safe_mode: bool = True,
    allow_nonfinite: bool = True,
    progress: Optional[bool] = None,
) -> LoadedModel:
    """A Keras model file (full-model HDF5 or ``.keras``, told apart by their bytes) as a module
    with its weights and, with ``compile``, its restored training state. The file is opened once."""
    filepath = os.fspath(filepath)
    with h5_errors(filepath), _open(filepath) as ck:
        if ck.model_config is None and ck.torch_config is not None:
            key, module = module_from_record(ck.torch_config, custom_objects, filepath)
            check_module(module)
            names = None
            report = _load_into(module, ck, names, by_name=True, device=device, allow_nonfinite=allow_nonfinite)
            if report.missing or report.unexpected or report.mismatched:
                raise WeightMismatchError(f"the weights do not fit the rebuilt '{key}':\n{report}", filepath=filepath)
        elif ck.model_config is None and ck.format == Format.KERAS:
            raise FileFormatError(f"the archive has no '{CONFIG}' member", filepath=filepath, layer=CONFIG)
        elif ck.model_config is None:
            raise FileFormatError(
                "no 'model_config' attribute: this is a weights-only file; build the model "
                "(model_from_json or your own module) and use load_weights",
                filepath=filepath,
            )
        else:
            module, report = _built_on_meta(ck, custom_objects, safe_mode, device, allow_nonfinite, progress)
            if module is None:
                module = _build_from_file(ck, custom_objects, safe_mode)
            # the legacy format keeps a nested model as one layer, Keras 3's store each of its layers
            names = module.keras_layer_names(flatten=ck.store is None)
            if report is None:
                report = _load_into(
                    module, ck, names, by_name=True, device=device, allow_nonfinite=allow_nonfinite, progress=progress
                )
            if report.missing or report.unexpected:
                raise WeightMismatchError(
                    f"the file's weights do not match its own model config: layers without weights in the file "
                    f"{report.missing}, weights in the file for no layer {report.unexpected}",
                    filepath=filepath,
                )
        training = _restore(module, ck, names) if compile else None
    module.eval()
    return LoadedModel(module, training)


def _built_on_meta(ck: CheckpointReader, custom_objects, safe_mode: bool, device, allow_nonfinite: bool, progress):
    """``load_model(device=...)``: the model built on the meta device and its tensors made
    straight from the file on ``device`` (one copy of the model in memory, no initialisation),
    as ``(module, report)``; ``(None, None)`` when the model does not build on meta or keeps
    tensors the file does not give (constants made at construction): then it is built as usual."""
    if device is None:
        return None, None
    try:
        with torch.device("meta"):
            module = _build_from_file(ck, custom_objects, safe_mode)
    except Exception:  # noqa: BLE001 - a model that needs real tensors to build: the usual way
        return None, None
    names = module.keras_layer_names(flatten=ck.store is None)
    try:
        report = _load_into(
            module, ck, names, by_name=True, device=device, allow_nonfinite=allow_nonfinite, progress=progress,
            assign=True,
        )  # fmt: skip
    except MetaTensorsLeft:
        return None, None
    return module, report


def _open(filepath: str) -> CheckpointReader:
    """The reader of ``filepath``; a ``.keras`` archive's layers named after its ``config.json``."""
    return open_checkpoint(filepath, config_layers=lambda config: [(p, n) for p, n, _, _ in layer_entries(config)])


def _model_keras_version(ck: CheckpointReader) -> Optional[str]:
    """The Keras version a model file's config follows: a legacy file's root attribute (None when
    it has none: the config's parser tells), an archive's ``metadata.json``."""
    return ck.attributes().keras_version if ck.store is None else ck.keras_version


def _build_from_file(ck: CheckpointReader, custom_objects, safe_mode: bool) -> KerasGraph:
    try:
        return build_module(ck.model_config, _model_keras_version(ck), custom_objects, safe_mode, ck.filepath)
    except TorchKerasIOError as exc:
        if exc.filepath is None:
            exc.filepath = ck.filepath
            if ck.format == Format.KERAS:
                exc.layer = exc.layer or CONFIG
            exc.args = (exc._format(),)
        raise


def load_weights(
    module: nn.Module,
    filepath: Union[str, os.PathLike],
    *,
    by_name: bool = False,
    skip_mismatch: bool = False,
    reshape: bool = False,
    device=None,
    layer_names: LayerNames = None,
    allow_nonfinite: bool = True,
    progress: Optional[bool] = None,
    assign: bool = False,
) -> LoadReport:
    """Read a Keras weights file (or a model file's weights) into ``module``: :func:`torchkeras_io.load_weights`."""
    check_module(module)
    filepath = os.fspath(filepath)
    with h5_errors(filepath), _open(filepath) as ck:
        return _load_into(
            module,
            ck,
            layer_names,
            by_name=by_name,
            skip_mismatch=skip_mismatch,
            reshape=reshape,
            device=device,
            allow_nonfinite=allow_nonfinite,
            progress=progress,
            assign=assign,
        )


def _load_into(
    module: nn.Module,
    ck: CheckpointReader,
    layer_names,
    *,
    by_name: bool,
    skip_mismatch: bool = False,
    reshape: bool = False,
    device=None,
    allow_nonfinite: bool = True,
    progress=None,
    assign: bool = False,
) -> LoadReport:
    if not assign and any(t.device.type == "meta" for t in (*module.parameters(), *module.buffers())):
        raise TorchKerasIOError(
            "the module has tensors on the meta device: load with assign=True to materialise them",
            filepath=ck.filepath,
        )
    if device is not None and not assign:
        module.to(device)
    slots, top = plan(module, layer_names)
    if ck.store is not None:  # Keras 3 pairs a store's layers by their paths
        file_layers = ck.named(store_path_order(ck.layers_by_path(), slots, module))
    else:
        file_layers = {name: ck.layer(name) for name in ck.layer_names}
    file_layers = check_keras_pairing(module, ck.store, file_layers, ck.filepath, by_name)
    info = FileInfo(ck.filepath, ck.keras_version, ck.backend)
    report = load_layers(
        slots,
        top,
        ck,
        file_layers,
        info,
        by_name=by_name,
        skip_mismatch=skip_mismatch,
        reshape=reshape,
        allow_nonfinite=allow_nonfinite,
        progress=progress,
        assign=Assign(module, device) if assign else None,
    )
    if assign and device is not None:
        module.to(device)  # what the file did not give (already real) follows the loaded tensors
    # let go of the file's objects before it closes: closing a file that still has thousands of
    # open datasets costs more than the load
    del file_layers
    return report


def _restore(module: nn.Module, ck: CheckpointReader, layer_names) -> Optional[Restored]:
    """The optimizer (and scheduler), loss and metrics of a model file, onto ``module``'s tensors;
    None when the file was not saved compiled (Keras 3: without an optimizer)."""
    slots, top = plan(module, layer_names)
    stored = {}  # id(Lazy) -> the weight's name in the file (Keras <= 2.0.5 sorted the optimizer's by it)
    if ck.format == Format.KERAS:
        compile_config = ck.training_config
        if not isinstance(compile_config, dict) or not isinstance(compile_config.get("optimizer"), dict):
            return None
        # Keras 3 keeps an optimizer variable per model variable, layers in the config's order
        order = {name: i for i, (_, name, _, _) in enumerate(layer_entries(module.keras_config))}
        top = None
    else:
        if not ck.training_config:
            return None
        order = {name: i for i, name in enumerate(ck.layer_names)}
        for s in slots:
            if s.name in order:
                found = ck.layer(s.name).weights
                # the file's weights pair with the layer's by position (as load_weights reads them)
                # unless a layout changed on the way (Keras 1 per-gate or Theano kernels): then none
                if [tuple(w.shape) for w in found] == [tuple(w.shape) for w in s.layer.weights]:
                    stored.update((id(w), x.name) for w, x in zip(s.layer.weights, found))
    slots = sorted(slots, key=lambda s: order.get(s.name, len(order)))
    layers = [(s.name, s.layer.weights) for s in slots]
    if top is not None:
        layers.append((top.name, top.layer.weights))
    return restore_training(
        ck.training(),
        layers,
        module=module,
        keras_version=_model_keras_version(ck),
        filepath=ck.filepath,
        stored_names=stored,
    )


# ======================================================================================== save
def save_model(
    module: nn.Module,
    filepath: Union[str, os.PathLike],
    *,
    optimizer=None,
    loss=None,
    metrics=None,
    overwrite: bool = True,
    include_optimizer: bool = True,
    input_shape: InputShape = None,
    channels_last: bool = False,
    scheduler=None,
    batch_axis: BatchAxis = 0,
    format: Optional[str] = None,
    compression: Optional[str] = None,
    compression_opts: Optional[int] = None,
    progress: Optional[bool] = None,
) -> None:
    """Write ``module`` as a Keras model file: :func:`torchkeras_io.save_model` (which unwraps a ``Model``)."""
    gzip_level = check_compression(compression, compression_opts)
    keras3 = chosen_format(filepath, format, ".keras") == "keras"
    if keras3 and compression is not None:
        raise TorchKerasIOError("compression applies to the legacy HDF5 format (an '.h5' name or format='h5')")
    training = dict(
        optimizer=optimizer, loss=loss, metrics=metrics, scheduler=scheduler, include_optimizer=include_optimizer
    )
    try:
        config, sources, origins = keras_config(module, input_shape, channels_last, batch_axis, filepath)
        make = _keras3_checkpoint if keras3 else _legacy_checkpoint
        checkpoint = make(module, config, sources, origins, filepath, training)
    except UnsupportedLayerError as exc:
        if keras3:
            raise
        checkpoint = _torch_record_checkpoint(module, exc, training)
    write_checkpoint(
        filepath,
        checkpoint,
        overwrite=overwrite,
        compression=compression,
        gzip_level=gzip_level,
        progress=progress,
        desc="save_model",
    )


def _legacy_checkpoint(module, config: dict, sources, origins: dict, filepath, training: dict) -> Checkpoint:
    """A full-model HDF5: the config (tf-keras's dialect, or the Keras 3 one a model loaded from a
    ``.keras`` keeps) and its layers' weights, in ``layer_names`` order."""
    layers = legacy_layers(module, config, sources)
    # never write a file that does not load: rebuild the config and fit every weight first
    prove_rebuilds(
        config, [(r.name, r.weights) for r in layers], filepath, keras_version=dialect(config, sources), origins=origins
    )
    warn_h5_limits(config, layers, filepath)
    # a Keras 3 config keeps Keras 3's version: readers (ours included) number its nodes by it
    version = KERAS3_VERSION if dialect(config, sources) == KERAS3_VERSION else KERAS_VERSION
    attrs = {"keras_version": version, "backend": SAVED_BACKEND, "model_config": json.dumps(config).encode("utf-8")}
    return Checkpoint(
        Format.LEGACY_MODEL,
        layers=layers,
        attrs=attrs,
        training=training_record(_with_top(layers, ()), dialect=TF_KERAS, **training),
    )


def _torch_record_checkpoint(module: nn.Module, exc: UnsupportedLayerError, training: dict) -> Checkpoint:
    """A full-model HDF5 of a module Keras cannot express (``exc`` says why): its weights and a
    torch-side record naming its registered class, which only our :func:`load_model` rebuilds."""
    key = registered_name(module)
    if key is None and isinstance(module, KerasGraph):
        raise exc  # a model built from a Keras config: registering its class is no way out
    if key is None:
        raise UnsupportedLayerError(
            f"{exc.message}. To save it anyway (weights plus a torch-side record that tkio.load_model "
            f"rebuilds), register {type(module).__name__} with @torchkeras_io.register_serializable() and give "
            "it a get_config()",
            layer=exc.layer,
            filepath=exc.filepath,
        ) from exc
    warnings.warn(
        f"{type(module).__name__} cannot be expressed in Keras ({exc.message}); saving its weights and "
        f"a torch-side record '{key}' that only torchkeras_io.load_model reads",
        TorchKerasIOWarning,
        stacklevel=4,
    )
    slots, top = plan(module)
    layers = [LayerWeights(s.name, s.layer.weights, s.layer.extras, {"keras_class": s.layer.class_name}) for s in slots]
    top_weights = top.layer.weights if top is not None else ()
    record = {"registered_name": key, "config": module.get_config()}
    attrs = {
        "keras_version": KERAS_VERSION,
        "backend": SAVED_BACKEND,
        "torch_config": json.dumps(record).encode("utf-8"),
    }
    return Checkpoint(
        Format.LEGACY_MODEL,
        layers=layers,
        top_level=top_weights,
        attrs=attrs,
        training=training_record(_with_top(layers, top_weights), dialect=TF_KERAS, **training),
    )


def _with_top(layers: list, top_weights) -> list:
    """``[(name, weights)]`` of a legacy file's layers and its top-level weights, as its optimizer counts them."""
    return [(r.name, r.weights) for r in layers] + [(TOP_LEVEL, top_weights)]


def _keras3_checkpoint(module, config: dict, sources, origins: dict, filepath, training: dict) -> Checkpoint:
    """A ``.keras`` archive: the config in Keras 3's dialect, the weights at Keras 3's store paths."""
    config3, renamed, origins = keras3_config(config, origins, filepath)
    objects, ordered = store_objects(module, config3, sources, filepath, renamed)
    # never write a file that does not load: rebuild the Keras 3 config and fit every weight first
    prove_rebuilds(config3, ordered, filepath, keras_version=KERAS3_VERSION, flavor="keras3", origins=origins)
    return Checkpoint(
        Format.KERAS,
        objects=objects,
        config=config3,
        metadata=metadata(KERAS3_VERSION),
        training=training_record(ordered, dialect=KERAS3, **training),
    )


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
    """Write the weights of ``module`` as a Keras weights file: :func:`torchkeras_io.save_weights`."""
    gzip_level = check_compression(compression, compression_opts)
    sharded = max_shard_size is not None or os.fspath(filepath).endswith(".weights.json")
    keras3 = sharded or chosen_format(filepath, format, ".weights.h5") == "keras"
    if compression is not None and keras3:
        raise TorchKerasIOError("compression applies to the legacy HDF5 layout (an '.h5' name or format='h5')")
    check_module(module)
    slots, top = plan(module, layer_names)
    if sharded:
        kind = Format.SHARDED
    elif keras3:
        kind = Format.KERAS3_WEIGHTS
    else:
        kind = Format.LEGACY_WEIGHTS
    if (
        kind == Format.KERAS3_WEIGHTS
        and isinstance(module, KerasGraph)
        and module.keras_config is not None
        and layer_names is None
    ):
        # a model built from a Keras config goes at the paths its config gives, so that Keras 3
        # reads it into the same architecture
        objects, _ = store_objects(module, to_keras3(module.keras_config), None)
        checkpoint = Checkpoint(kind, objects=objects, order=[o.path for o in objects if o.path])
    elif keras3:
        objects, paths = module_objects(slots, top)
        checkpoint = Checkpoint(kind, objects=objects, order=paths)
    else:
        layers = [
            LayerWeights(
                s.name,
                s.layer.weights,
                s.layer.extras,
                {"keras_class": s.layer.class_name, "torch_class": type(s.module).__name__},
            )
            for s in slots
        ]
        checkpoint = Checkpoint(kind, layers=layers, top_level=top.layer.weights if top is not None else ())
    max_bytes = int((5.0 if max_shard_size is None else max_shard_size) * 1024**3)
    write_checkpoint(
        filepath,
        checkpoint,
        overwrite=overwrite,
        compression=compression,
        gzip_level=gzip_level,
        progress=progress,
        desc="save_weights",
        max_shard_bytes=max_bytes,
    )


def to_json(
    module: nn.Module, *, input_shape: InputShape = None, channels_last: bool = False, batch_axis: BatchAxis = 0
) -> str:
    """The Keras model config (JSON) of ``module``, proved to rebuild: :func:`torchkeras_io.to_json`."""
    config, sources, origins = keras_config(module, input_shape, channels_last, batch_axis)
    prove_rebuilds(
        config,
        [(r.name, r.weights) for r in legacy_layers(module, config, sources)],
        None,
        keras_version=dialect(config, sources),
        origins=origins,
    )
    return json.dumps(config)


def to_yaml(module: nn.Module, **kwargs) -> str:
    """As :func:`to_json`, in YAML (needs PyYAML)."""
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover
        raise TorchKerasIOError("to_yaml needs PyYAML: pip install pyyaml") from exc
    return yaml.safe_dump(json.loads(to_json(module, **kwargs)))
