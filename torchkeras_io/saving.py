"""torch modules -> Keras: ``to_json`` / ``to_yaml`` / ``save_model``."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import warnings
from typing import Optional, Sequence, Union

import h5py
import torch
from torch import nn

from torchkeras_io._engine.keras3 import KERAS3_VERSION, flat_layer_names, save_keras_model
from torchkeras_io._engine.optim import keras_variables, save_training
from torchkeras_io._engine.plan import plan
from torchkeras_io._engine.progress import check_compression, progress_bar, tensor_bytes
from torchkeras_io._formats.atomic import atomic_write_path
from torchkeras_io._formats.keras3 import chosen_format
from torchkeras_io._formats.legacy_h5 import FileLayer, LayerRecord, write_weights_group
from torchkeras_io._graph.export import KERAS_VERSION, export_config
from torchkeras_io._graph.graph import KerasGraph
from torchkeras_io._keras.config import generation_of
from torchkeras_io._keras.order import ConfigGraphError, in_keras_order, layer_order
from torchkeras_io._layers import FileInfo
from torchkeras_io._version import __version__
from torchkeras_io.errors import TorchKerasIOError, TorchKerasIOWarning, UnsupportedLayerError, WeightMismatchError
from torchkeras_io.registration import registered_name
from torchkeras_io.weights import _fit, _target

InputShape = Union[tuple, list, None]
BatchAxis = Union[int, Sequence[int]]


def _unwrap(model: nn.Module) -> nn.Module:
    from torchkeras_io.models import Model

    return model.module if isinstance(model, Model) else model


def _config(module: nn.Module, input_shape: InputShape, channels_last: bool, batch_axis: BatchAxis = 0,
            filepath=None):  # fmt: skip
    """(Keras model config with its layers in the order Keras rebuilds them, weight sources or None,
    ``{Keras layer name: the torch module or op it comes from}``)."""
    if isinstance(module, KerasGraph) and module.keras_config is not None:
        config, sources, origins = module.keras_config, None, {}
    else:
        config, sources, ctx = export_config(module, input_shape, channels_last_io=channels_last,
                                             batch_axis=batch_axis)  # fmt: skip
        paths = {id(m): p for p, m in module.named_modules()}
        origins = {e["name"]: f"torch op '{e['name']}'" for e in ctx.layers}
        origins.update(
            {
                entry["name"]: f"module '{paths.get(key[0], '?')}'"
                for key, entry in getattr(ctx, "_module_layer", {}).items()
            }
        )
    return (*_in_keras_order(config, sources, filepath), origins)


def _in_keras_order(config: dict, sources: Optional[list], filepath=None) -> tuple:
    """The config with its layers listed as tf-keras's ``model.layers`` lists them once rebuilt.

    Keras pairs a legacy file's weight groups with the layers by position in that order (and
    Keras 3's ``.keras`` numbers its store paths in it), which is its own depth sort of the graph,
    not the order of the config (:mod:`._keras.order`). Listed so, the config is a fixed point:
    Keras rebuilds this same order, and ``layer_names`` written in it pair every group with its
    layer. Layers that no output depends on are not in a rebuilt Keras model: they are left out."""
    try:
        ordered, dropped = in_keras_order(config, "tf_keras")
    except ConfigGraphError as exc:
        raise UnsupportedLayerError(f"the Keras config made for the model does not rebuild: {exc}; nothing was "
                                    "written", filepath=filepath) from exc  # fmt: skip
    weighted = {s.keras_name for s in sources} if sources is not None else set()
    lost = [name for name in dropped if name in weighted]
    if lost:  # an unused operation (a chunk nobody reads) costs nothing; unused weights are worth a word
        warnings.warn(f"layers {lost} feed no output of the model; Keras leaves them out of the rebuilt model, "
                      "so their weights are not saved", TorchKerasIOWarning, stacklevel=4)  # fmt: skip
        sources = [s for s in sources if s.keras_name not in set(lost)]
    return ordered, sources


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
    module = _unwrap(module)
    config, sources, origins = _config(module, input_shape, channels_last, batch_axis)
    prove_rebuilds(config, [(r.name, r.weights) for r in _records(module, config, sources)], None,
                   keras_version=_dialect(config, sources), origins=origins)  # fmt: skip
    return json.dumps(config)


def to_yaml(module: nn.Module, *, input_shape: InputShape = None, channels_last: bool = False,
            batch_axis: BatchAxis = 0) -> str:  # fmt: skip
    """As :func:`to_json`, in YAML (needs PyYAML)."""
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover
        raise TorchKerasIOError("to_yaml needs PyYAML: pip install pyyaml") from exc
    text = to_json(module, input_shape=input_shape, channels_last=channels_last, batch_axis=batch_axis)
    return yaml.safe_dump(json.loads(text))


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
    from torchkeras_io.models import Model

    gzip_level = check_compression(compression, compression_opts)

    if isinstance(model, Model):
        optimizer = model.optimizer if optimizer is None else optimizer
        loss = model.loss if loss is None else loss
        metrics = model.metrics if metrics is None else metrics
    module = _unwrap(model)
    if chosen_format(filepath, format, ".keras") == "keras":
        if compression is not None:
            raise TorchKerasIOError("compression applies to the legacy HDF5 format (an '.h5' name or format='h5')")
        config, sources, origins = _config(module, input_shape, channels_last, batch_axis, filepath)
        save_keras_model(module, filepath, config, sources, optimizer=optimizer, loss=loss, metrics=metrics,
                         scheduler=scheduler, include_optimizer=include_optimizer, overwrite=overwrite,
                         origins=origins)  # fmt: skip
        return
    torch_record = None
    try:
        config, sources, origins = _config(module, input_shape, channels_last, batch_axis, filepath)
        records = _records(module, config, sources)
        # never write a file that does not load: rebuild the config and fit every weight first
        prove_rebuilds(config, [(r.name, r.weights) for r in records], filepath,
                       keras_version=_dialect(config, sources), origins=origins)  # fmt: skip
        _warn_h5_limits(config, records, filepath)
    except UnsupportedLayerError as exc:
        key = registered_name(module)
        if key is None and isinstance(module, KerasGraph):
            raise  # a model built from a Keras config: registering its class is no way out
        if key is None:
            raise UnsupportedLayerError(
                f"{exc.message}. To save it anyway (weights plus a torch-side record that tkio.load_model "
                f"rebuilds), register {type(module).__name__} with @torchkeras_io.register_serializable() and give "
                "it a get_config()", layer=exc.layer, filepath=exc.filepath) from exc  # fmt: skip
        warnings.warn(f"{type(module).__name__} cannot be expressed in Keras ({exc.message}); saving its weights and "
                      f"a torch-side record '{key}' that only torchkeras_io.load_model reads", TorchKerasIOWarning,
                      stacklevel=2)  # fmt: skip
        torch_record = {"registered_name": key, "config": module.get_config()}
        slots, top = plan(module)
        records = [LayerRecord(s.name, s.layer.weights, s.layer.extras, {"keras_class": s.layer.class_name})
                   for s in slots]  # fmt: skip
        config = None
    top_weights = top.layer.weights if torch_record and top is not None else ()
    bar = progress_bar(progress, tensor_bytes(records, top_weights), "save_model")
    with contextlib.closing(bar), atomic_write_path(filepath, overwrite=overwrite) as tmp:
        with h5py.File(tmp, "w") as f:
            # a Keras 3 config keeps Keras 3's version: readers (ours included) number its nodes by it
            keras3 = config is not None and _dialect(config, sources) == KERAS3_VERSION
            f.attrs["keras_version"] = KERAS3_VERSION if keras3 else KERAS_VERSION
            f.attrs["backend"] = "tensorflow"
            if config is not None:
                f.attrs["model_config"] = json.dumps(config).encode("utf-8")
            else:
                f.attrs["torch_config"] = json.dumps(torch_record).encode("utf-8")
            f.attrs["torchkeras_io_version"] = __version__
            write_weights_group(f.create_group("model_weights"), records, top_weights, compression=compression,
                                gzip_level=gzip_level, progress=bar.update)  # fmt: skip
            if optimizer is not None or loss is not None or metrics:
                layers = [(r.name, r.weights) for r in records] + [("top_level_model_weights", top_weights)]
                save_training(f, keras_variables(layers), optimizer, loss, metrics, scheduler, include_optimizer)


def _dialect(config: dict, sources: Optional[list]) -> str:
    """The Keras version whose numbering ``config`` follows, for the proof's parse.

    An exported config is ours (:data:`KERAS_VERSION`). A model built from a Keras config keeps
    that config, whose writer's version is gone: Keras 3 writes ``module`` at the top of a
    ``.keras`` config, and its nodes as ``__keras_tensor__`` (its legacy ``.h5`` too); a Keras 1
    config has its own argument names. Guessing from the text alone would take tf-keras 2.13+'s
    ``registered_name`` for Keras 3, and count a nested model's calls as Keras 3 does."""
    if sources is not None:
        return KERAS_VERSION
    text = json.dumps(config)
    if "module" in config or '"__keras_tensor__"' in text or '"batch_shape"' in text:
        return KERAS3_VERSION
    return "1" if generation_of(None, config) == 1 else KERAS_VERSION


def _records(module: nn.Module, config: dict, sources: Optional[list]) -> list:
    """One record per Keras layer in config order, with weights where the layer has them."""
    names = [entry["name"] if "name" in entry else entry["config"]["name"] for entry in _layer_entries(config)]
    weights = {}
    if sources is None:  # a model built from a Keras config: its own layer names
        slots, _ = plan(module, module.keras_layer_names())
        for s in slots:
            weights[s.name] = s.layer
    else:
        for src in sources:
            weights[src.keras_name] = src.adapter.export(src.module, src.ctx)[src.index]
    out = []
    for name in names:
        layer = weights.pop(name, None)
        if layer is None:
            out.append(LayerRecord(name, []))
        else:
            out.append(LayerRecord(name, layer.weights, layer.extras, {"keras_class": layer.class_name}))
    if weights and sources is not None:  # pragma: no cover - every weight source names a layer of the config
        raise TorchKerasIOError(f"weights for layers missing from the config: {sorted(weights)}")
    return out


def _describe(config: dict, name: Optional[str], origins: dict) -> str:
    """Where a Keras layer of ``config`` comes from: its class and the torch module or op behind it."""
    if name is None:
        return ""
    cls = next((e.get("class_name") for e in _layer_entries(config)
                if e.get("name", (e.get("config") or {}).get("name")) == name), None)  # fmt: skip
    origin = origins.get(name)
    return f" [Keras layer '{name}'" + (f", {cls}" if cls else "") + (f", from {origin}" if origin else "") + "]"


def _proof_graph(config: dict, keras_version: Optional[str]) -> KerasGraph:
    """The model ``config`` rebuilds to, its tensors on the ``meta`` device: shapes, no storage.

    The proof only compares shapes, so it builds no second copy of the weights (and spends no time
    initializing them). A builder that needs the values of a tensor it made (a constant read back
    while building) cannot run on ``meta``: for such a config, and to tell a genuine error from
    one of ``meta``'s, the build is done again on the CPU, as before, and its outcome stands."""
    from torchkeras_io.models import _build

    try:
        with torch.device("meta"):
            return _build(copy.deepcopy(config), keras_version, None, True).module
    except TorchKerasIOError:
        pass  # a genuine error or a builder that needs values: the CPU build below decides
    return _build(copy.deepcopy(config), keras_version, None, True).module


def prove_rebuilds(config: dict, layers: Sequence[tuple], filepath: Union[str, os.PathLike, None], *,
                   keras_version: Optional[str] = KERAS_VERSION, flavor: str = "tf_keras",
                   origins: Optional[dict] = None) -> None:  # fmt: skip
    """Refuse a Keras model config that would not load, before anything is written.

    ``layers``: ``[(Keras layer name, weights)]`` in the order the file pairs them (legacy
    ``layer_names``, Keras 3's store paths). torchkeras_io's own graph builder rebuilds the model
    from ``config``; every layer with weights in the rebuilt model must get weights of exactly its
    shapes, and the layers with weights must come in the order ``flavor``'s Keras lists
    ``model.layers`` after ``from_config`` (its positional pairing; for ``"keras3"``, ``layers``
    names the layers of nested models one by one, as Keras 3's store does). Raises
    :class:`UnsupportedLayerError` for a config that does not rebuild, :class:`WeightMismatchError`
    for weights that do not fit, naming the Keras layer and (``origins``: ``{Keras layer name:
    description}``) the torch module or op behind it.
    """
    origins = origins or {}
    try:
        graph = _proof_graph(config, keras_version)
    except TorchKerasIOError as exc:
        raise UnsupportedLayerError(f"the Keras config made for the model does not rebuild ({exc.message})"
                                    f"{_describe(config, exc.layer, origins)}; nothing was written",
                                    filepath=filepath, layer=exc.layer) from exc  # fmt: skip
    # the legacy format stores a nested model as one layer, Keras 3's store each of its layers
    slots, _ = plan(graph, graph.keras_layer_names() if flavor == "tf_keras" else flat_layer_names(graph))
    by_name = {s.name: s for s in slots}
    info = FileInfo(os.fspath(filepath) if filepath is not None else "<config>", keras_version or KERAS_VERSION,
                    "tensorflow")  # fmt: skip
    for name, weights in layers:
        slot = by_name.pop(name, None)
        have = [tuple(w.shape) for w in weights]
        if slot is None:
            if have:
                raise WeightMismatchError(f"the rebuilt model has no layer with weights for the model's {have}"
                                          f"{_describe(config, name, origins)}; nothing was written",
                                          filepath=filepath, layer=name)  # fmt: skip
            continue
        # as the loader fits a file's weights (older layouts normalized), then onto the torch tensors
        fitted, _, bad = _fit(slot, FileLayer(name, list(weights), {}, {}), info, False)
        wrong = [] if fitted is None else [
            t for t, lazy in slot.adapter.load(slot.module, slot.index, fitted, {}).items()
            if tuple(_target(slot.module, t).shape) != tuple(lazy.shape)]  # fmt: skip
        if bad or wrong:
            want = [tuple(w.shape) for w in slot.layer.weights]
            raise WeightMismatchError(f"the rebuilt layer takes weights of shapes {want}, the model has {have}"
                                      f"{_describe(config, name, origins)}; nothing was written",
                                      filepath=filepath, layer=name)  # fmt: skip
    missing = [name for name, s in by_name.items() if s.layer.weights]
    if missing:
        raise WeightMismatchError(f"the rebuilt model has layers with weights that the model does not give: "
                                  f"{missing[:10]}; nothing was written", filepath=filepath)  # fmt: skip
    top = layer_order(config, flavor)
    weighted = [name for name, weights in layers if len(weights) and name in set(top)]
    order = [name for name in top if name in set(weighted)]
    if order != weighted:  # pragma: no cover - the config is put in this order before it is proved
        bad = next(i for i, (a, b) in enumerate(zip(order, weighted)) if a != b)
        raise WeightMismatchError(f"Keras would pair weighted layer #{bad} '{order[bad]}' with the weights of "
                                  f"'{weighted[bad]}'; nothing was written", filepath=filepath, layer=order[bad])  # fmt: skip


#: layer classes that Keras 3 cannot rebuild from a legacy (tf-keras) config, tf-keras's own files included:
#: tf-keras needs MultiHeadAttention's query/key/value_shape and ``value=`` by keyword, which Keras 3 rejects;
#: Keras 3 has no TFOpLambda (its own operation nodes exist only in the ``.keras`` dialect)
_KERAS3_LEGACY_UNREADABLE = ("MultiHeadAttention", "TFOpLambda")


def _warn_h5_limits(config: dict, records: list, filepath) -> None:
    """Say so when the legacy file cannot serve both Kerases, and name the format that does."""
    if "module" in config:  # a model loaded from a .keras archive keeps Keras 3's config dialect
        warnings.warn(f"{os.fspath(filepath)}: the model's config is in Keras 3's dialect, which tf-keras cannot "
                      "rebuild, so only Keras 3 loads this file; save it under a '.keras' name (Keras 3's format) or "
                      "export the torch module for a file both read", TorchKerasIOWarning, stacklevel=3)  # fmt: skip
        return
    classes = {e.get("class_name") for e in _layer_entries(config)}
    unreadable = sorted(classes & set(_KERAS3_LEGACY_UNREADABLE))
    weighted = [r.name for r in records if len(r.weights)]
    k3 = [name for name in layer_order(config, "keras3") if name in set(weighted)]
    if unreadable:
        why = f"Keras 3 cannot rebuild {', '.join(unreadable)} from a legacy HDF5 config"
    elif k3 != weighted:
        # Keras 3 reads a legacy node's keyword tensors as plain values: its model.layers can differ
        why = "Keras 3 orders this model's layers differently from tf-keras, and legacy HDF5 pairs weights by order"
    else:
        return
    warnings.warn(f"{os.fspath(filepath)}: {why}, so only tf-keras loads this file; save it under a '.keras' name "
                  "(Keras 3's format) for Keras 3", TorchKerasIOWarning, stacklevel=3)  # fmt: skip


def _layer_entries(config: dict) -> list:
    cfg = config.get("config", {})
    layers = cfg if isinstance(cfg, list) else cfg.get("layers", [])
    if config.get("class_name") == "Sequential" and layers and layers[0].get("class_name") == "InputLayer":
        layers = layers[1:]  # Keras's Sequential.layers leaves the InputLayer out
    return layers
