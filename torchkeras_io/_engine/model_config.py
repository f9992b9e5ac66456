"""A torch module's Keras model config, and the weight records a file of it holds.

The save side's half of the semantic work, format-free but for the dialect: the config is
exported once (or kept, for a model built from one), listed in the order tf-keras rebuilds its
layers, and for a ``.keras`` archive converted to Keras 3's dialect and listed in Keras 3's order
(whose store paths number the layers in it). The records are a legacy file's layers in
``layer_names`` order, or a Keras 3 store's objects at the paths Keras 3 gives each layer.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Optional, Sequence, Union

from torch import nn

from torchkeras_io._checkpoint.records import LayerWeights
from torchkeras_io._engine.plan import plan
from torchkeras_io._engine.transfer import slot_paths
from torchkeras_io._formats.keras3_paths import groups_for, split
from torchkeras_io._formats.keras3_store import StoreObject
from torchkeras_io._formats.legacy_h5 import KERAS_VERSION
from torchkeras_io._graph.export import export_config
from torchkeras_io._graph.graph import KerasGraph
from torchkeras_io._keras.config import config_layers, entry_name, generation_of
from torchkeras_io._keras.keras3 import (
    keras3_unreadable,
    layer_entries,
    legal_names,
    tf_keras_hard_sigmoids,
    to_keras3,
)
from torchkeras_io._keras.order import ConfigGraphError, in_keras_order, layer_order
from torchkeras_io._layers.lambdas import TranslatedLambda
from torchkeras_io.errors import TorchKerasIOError, TorchKerasIOWarning, UnsupportedLayerError, WeightMismatchError

KERAS3_VERSION = "3.15.1"  # the Keras 3 dialect our .keras files follow

InputShape = Union[tuple, list, None]
BatchAxis = Union[int, Sequence[int]]


def keras_config(
    module: nn.Module, input_shape: InputShape, channels_last: bool, batch_axis: BatchAxis = 0, filepath=None
) -> tuple:
    """(Keras model config with its layers in the order tf-keras rebuilds them, weight sources or
    None, ``{Keras layer name: the torch module or op it comes from}``)."""
    lambdas = [m.keras_name for m in module.modules() if isinstance(m, TranslatedLambda)]
    if lambdas:
        raise UnsupportedLayerError(f"Lambda layers {lambdas[:3]} are translated from stored bytecode: save_model "
                                    "never writes a Lambda (replace them with torch modules); nothing was written",
                                    filepath=filepath)  # fmt: skip
    if isinstance(module, KerasGraph) and module.keras_config is not None:
        config, sources, origins = module.keras_config, None, {}
    else:
        config, sources, ctx = export_config(module, input_shape, channels_last_io=channels_last, batch_axis=batch_axis)
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
    layer. Layers that no output depends on are not in a rebuilt Keras model: they are left out
    (before a Keras 3 conversion, which numbers a nested model's calls among the kept ones)."""
    try:
        ordered, dropped = in_keras_order(config, "tf_keras")
    except ConfigGraphError as exc:
        raise UnsupportedLayerError(
            f"the Keras config made for the model does not rebuild: {exc}; nothing was written", filepath=filepath
        ) from exc
    weighted = {s.keras_name for s in sources} if sources is not None else set()
    lost = [name for name in dropped if name in weighted]
    if lost:  # an unused operation (a chunk nobody reads) costs nothing; unused weights are worth a word
        warnings.warn(
            f"layers {lost} feed no output of the model; Keras leaves them out of the rebuilt model, "
            "so their weights are not saved",
            TorchKerasIOWarning,
            stacklevel=5,
        )
        sources = [s for s in sources if s.keras_name not in set(lost)]
    return ordered, sources


def dialect(config: dict, sources: Optional[list]) -> str:
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


def _weights_by_name(module: nn.Module, sources: Optional[list], layer_names) -> dict:
    """``{Keras layer name: KerasLayer}``: from the export's weight sources, or (a model built from
    a Keras config, ``sources`` None) from the module's own layer names."""
    if sources is None:
        slots, _ = plan(module, layer_names)
        return {s.name: s.layer for s in slots}
    return {src.keras_name: src.adapter.export(src.module, src.ctx)[src.index] for src in sources}


def legacy_layers(module: nn.Module, config: dict, sources: Optional[list]) -> list:
    """One record per Keras layer in config order, with weights where the layer has them."""
    weights = _weights_by_name(module, sources, module.keras_layer_names() if sources is None else None)
    out = []
    for entry in config_layers(config):
        name = entry_name(entry)
        layer = weights.pop(name, None)
        if layer is None:
            out.append(LayerWeights(name, []))
        else:
            out.append(LayerWeights(name, layer.weights, layer.extras, {"keras_class": layer.class_name}))
    if weights and sources is not None:  # pragma: no cover - every weight source names a layer of the config
        raise TorchKerasIOError(f"weights for layers missing from the config: {sorted(weights)}")
    return out


def keras3_config(config: dict, origins: dict, filepath) -> tuple:
    """(the Keras 3 dialect of ``config``, listed in Keras 3's rebuild order; ``{old layer name:
    new}``; ``origins`` under the new names). Refuses a layer Keras 3 cannot deserialize."""
    hard = tf_keras_hard_sigmoids(config)
    if hard:  # the proof compares shapes only: it would pass a model Keras 3 computes differently
        name, key = hard[0]
        raise UnsupportedLayerError(
            f"its {key} 'hard_sigmoid' is tf-keras's clip(0.2x + 0.5, 0, 1), not Keras 3's hard_sigmoid "
            "(relu6(x + 3) / 6), and Keras 3 has no name for it"
            + (f" (nor for {len(hard) - 1} more such activations)" if len(hard) > 1 else "")
            + "; save the model under an '.h5' name for tf-keras instead; nothing was written",
            layer=name,
            filepath=filepath,
        )
    # Keras 3 forbids tf-keras's '/' in names ("conv1/conv"): the file names such layers anew, in
    # its config and in its store alike (the layers' paths do not change)
    config3, renamed = legal_names(to_keras3(config))
    unreadable = keras3_unreadable(config3)
    if unreadable:  # our loader rebuilds these, Keras 3 does not: the proof would pass them
        name, cls, function = unreadable[0]
        what = f"{cls} '{function}'" if function else cls
        raise UnsupportedLayerError(
            f"Keras 3 cannot deserialize layer '{name}' ({what}): keras.ops has no equivalent for it"
            + (f" (and {len(unreadable) - 1} more such layers)" if len(unreadable) > 1 else "")
            + "; save the model under an '.h5' name for tf-keras instead; nothing was written",
            layer=name,
            filepath=filepath,
        )
    origins = {renamed.get(k, k): v for k, v in origins.items()}
    # listed as Keras 3 rebuilds model.layers (a fixed point): the store paths, numbered in this
    # order, are the ones Keras 3 gives each layer, so same-class siblings are never swapped
    config3, _ = in_keras_order(config3, "keras3")
    return config3, renamed, origins


def module_objects(slots: Sequence, top) -> tuple:
    """(store objects, layer paths) of a planned module, named as a flat Keras 3 model of its layers."""
    objects = [StoreObject("", None, list(top.layer.weights) if top is not None else [], {})]
    paths = slot_paths(slots)
    for path, s in zip(paths, slots):
        objects += _layer_objects(path, s.layer.class_name, s.name, s.layer.weights, s.layer.extras)
    return objects, paths


def _layer_objects(
    path: str, class_name: str, name: Optional[str], weights: Sequence, extras=(), inner: Optional[str] = None
) -> list:
    """The store objects of one Keras layer at ``path`` (its own ``vars`` always, even when empty)."""
    groups = groups_for(class_name, inner)
    try:
        parts = split(groups, list(weights), name or path)
    except ValueError as exc:
        raise WeightMismatchError(str(exc), layer=name or path) from exc
    own = StoreObject(path, name, [], {e.name: e for e in extras})
    objects = [own]
    for g, ws in parts:
        if g == "":
            own.vars = ws
        else:
            objects.append(StoreObject(f"{path}/{g}", None, ws, {}))
    return objects


def store_objects(module, config3: dict, sources, filepath=None, renamed: Optional[dict] = None) -> tuple:
    """(store objects, ``[(layer name, weights)]`` in Keras order) of a module and its Keras 3 config:
    every layer at the path Keras 3 gives it, wrappers (TimeDistributed) and nested models included.
    ``renamed``: ``{module's layer name: its name in config3}`` (:func:`legal_names`)."""
    found = _weights_by_name(module, sources, module.keras_layer_names(flatten=False) if sources is None else None)
    weights = {(renamed or {}).get(k, k): v for k, v in found.items()}
    objects = [StoreObject("", config3.get("config", {}).get("name"), [], {})]
    ordered = []
    for path, name, cls, inner in layer_entries(config3):
        layer = weights.pop(name, None)
        if layer is not None:
            ordered.append((name, layer.weights))
        objects += _layer_objects(path, cls, name, layer.weights if layer else [], layer.extras if layer else (), inner)
    if weights:
        raise WeightMismatchError(f"weights for layers missing from the config: {sorted(weights)}", filepath=filepath)
    return objects, ordered


#: layer classes that Keras 3 cannot rebuild from a legacy (tf-keras) config, tf-keras's own files included:
#: tf-keras needs MultiHeadAttention's query/key/value_shape and ``value=`` by keyword, which Keras 3 rejects;
#: Keras 3 has no TFOpLambda (its own operation nodes exist only in the ``.keras`` dialect)
_KERAS3_LEGACY_UNREADABLE = ("MultiHeadAttention", "TFOpLambda")


def warn_h5_limits(config: dict, records: list, filepath) -> None:
    """Say so when the legacy file cannot serve both Kerases, and name the format that does."""
    if "module" in config:  # a model loaded from a .keras archive keeps Keras 3's config dialect
        warnings.warn(
            f"{os.fspath(filepath)}: the model's config is in Keras 3's dialect, which tf-keras cannot "
            "rebuild, so only Keras 3 loads this file; save it under a '.keras' name (Keras 3's format) or "
            "export the torch module for a file both read",
            TorchKerasIOWarning,
            stacklevel=5,
        )
        return
    classes = {e.get("class_name") for e in config_layers(config)}
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
    warnings.warn(
        f"{os.fspath(filepath)}: {why}, so only tf-keras loads this file; save it under a '.keras' name "
        "(Keras 3's format) for Keras 3",
        TorchKerasIOWarning,
        stacklevel=5,
    )
