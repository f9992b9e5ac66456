"""Keras model configs -> torch modules, and the proof, before a save, that a config rebuilds.

:func:`build_module` is the one way a config becomes a module (``model_from_json``, every model
load, the proof). :func:`prove_rebuilds` rebuilds a config about to be written, on the ``meta``
device, and fits every weight to it the way loading will: a file that would not load is never
written.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Optional, Sequence, Union

import torch

from torchkeras_io._checkpoint.records import LayerWeights
from torchkeras_io._engine.plan import plan
from torchkeras_io._engine.transfer import fit, target
from torchkeras_io._formats.legacy_h5 import KERAS_VERSION
from torchkeras_io._graph.build import build_graph
from torchkeras_io._graph.graph import KerasGraph
from torchkeras_io._keras.config import config_layers, entry_name, parse_model_config
from torchkeras_io._keras.order import layer_order
from torchkeras_io._layers.base import FileInfo
from torchkeras_io._layers.registry import BUILDERS, BuildContext
from torchkeras_io.errors import FileFormatError, TorchKerasIOError, UnsupportedLayerError, WeightMismatchError
from torchkeras_io.registration import lookup


def build_module(config, keras_version, custom_objects, safe_mode, filepath=None) -> KerasGraph:
    """The torch module of a Keras model config (JSON text or parsed; any Keras generation).

    ``custom_objects``: ``{Keras class or layer name: factory}``; errors a factory raises are the
    caller's and pass through, any other failure of a malformed config is a :class:`FileFormatError`."""
    try:
        model_def = parse_model_config(config, keras_version, registered=BUILDERS)
        ctx = BuildContext(model_def.generation, dict(custom_objects or {}), bool(safe_mode), filepath)
        graph = build_graph(model_def, ctx)
    except TorchKerasIOError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError) as exc:
        if _raised_by_user_code(exc, custom_objects):  # a custom_objects factory's own error is the caller's
            raise
        # the builders expect a well-formed config; a value of the wrong type or range deep in a
        # layer config surfaces here
        raise FileFormatError(
            f"model config: cannot build the model ({type(exc).__name__}: {str(exc)[:300]})", filepath=filepath
        ) from exc
    graph.keras_config = json.loads(config) if isinstance(config, (str, bytes)) else config
    return graph


def _raised_by_user_code(exc: BaseException, custom_objects) -> bool:
    """Whether a custom_objects factory (or anything it called) is on the traceback of ``exc``."""
    codes = set()
    for factory in (custom_objects or {}).values():
        for fn in (factory, getattr(factory, "__init__", None)):  # a function, or a class's __init__
            code = getattr(fn, "__code__", None)
            if code is not None:
                codes.add(code)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


def module_from_record(record_json: Union[str, bytes], custom_objects, filepath: str) -> tuple:
    """(registered name, module) of a module saved with a torch-side record: rebuilt from a
    registered class, never imported."""
    try:
        record = json.loads(record_json)
        key, config = record["registered_name"], record["config"]
        if not isinstance(key, str) or not isinstance(config, dict):
            raise TypeError("bad record")
    except (ValueError, KeyError, TypeError) as exc:
        raise FileFormatError(f"unreadable 'torch_config' attribute: {exc}", filepath=filepath) from exc
    factory = lookup(key, custom_objects)
    if factory is None:
        raise TorchKerasIOError(
            f"the file holds a torch module registered as '{key}'; register its class with "
            "@torchkeras_io.register_serializable() or pass custom_objects={"
            f"'{key}': cls}}",
            filepath=filepath,
        )
    return key, factory(**config)


# -------------------------------------------------------------------------------------- proof
def describe(config: dict, name: Optional[str], origins: dict) -> str:
    """Where a Keras layer of ``config`` comes from: its class and the torch module or op behind it."""
    if name is None:
        return ""
    cls = next((e.get("class_name") for e in config_layers(config) if entry_name(e) == name), None)
    origin = origins.get(name)
    return f" [Keras layer '{name}'" + (f", {cls}" if cls else "") + (f", from {origin}" if origin else "") + "]"


def _proof_graph(config: dict, keras_version: Optional[str]) -> KerasGraph:
    """The model ``config`` rebuilds to, its tensors on the ``meta`` device: shapes, no storage.

    The proof only compares shapes, so it builds no second copy of the weights (and spends no time
    initializing them). A builder that needs the values of a tensor it made (a constant read back
    while building) cannot run on ``meta``: for such a config, and to tell a genuine error from
    one of ``meta``'s, the build is done again on the CPU, as before, and its outcome stands."""
    try:
        with torch.device("meta"):
            return build_module(copy.deepcopy(config), keras_version, None, True)
    except TorchKerasIOError:
        pass  # a genuine error or a builder that needs values: the CPU build below decides
    return build_module(copy.deepcopy(config), keras_version, None, True)


def prove_rebuilds(
    config: dict,
    layers: Sequence[tuple],
    filepath: Union[str, os.PathLike, None],
    *,
    keras_version: Optional[str] = KERAS_VERSION,
    flavor: str = "tf_keras",
    origins: Optional[dict] = None,
) -> None:
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
        raise UnsupportedLayerError(
            f"the Keras config made for the model does not rebuild ({exc.message})"
            f"{describe(config, exc.layer, origins)}; nothing was written",
            filepath=filepath,
            layer=exc.layer,
        ) from exc
    # the legacy format stores a nested model as one layer, Keras 3's store each of its layers
    slots, _ = plan(graph, graph.keras_layer_names(flatten=flavor == "tf_keras"))
    by_name = {s.name: s for s in slots}
    info = FileInfo(
        os.fspath(filepath) if filepath is not None else "<config>", keras_version or KERAS_VERSION, "tensorflow"
    )
    for name, weights in layers:
        slot = by_name.pop(name, None)
        have = [tuple(w.shape) for w in weights]
        if slot is None:
            if have:
                raise WeightMismatchError(
                    f"the rebuilt model has no layer with weights for the model's {have}"
                    f"{describe(config, name, origins)}; nothing was written",
                    filepath=filepath,
                    layer=name,
                )
            continue
        # as the loader fits a file's weights (older layouts normalized), then onto the torch tensors
        fitted, _, bad = fit(slot, LayerWeights(name, list(weights), {}, {}), info, False)
        wrong = (
            []
            if fitted is None
            else [
                t
                for t, lazy in slot.adapter.load(slot.module, slot.index, fitted, {}).items()
                if tuple(target(slot.module, t).shape) != tuple(lazy.shape)
            ]
        )
        if bad or wrong:
            want = [tuple(w.shape) for w in slot.layer.weights]
            raise WeightMismatchError(
                f"the rebuilt layer takes weights of shapes {want}, the model has {have}"
                f"{describe(config, name, origins)}; nothing was written",
                filepath=filepath,
                layer=name,
            )
    missing = [name for name, s in by_name.items() if s.layer.weights]
    if missing:
        raise WeightMismatchError(
            f"the rebuilt model has layers with weights that the model does not give: "
            f"{missing[:10]}; nothing was written",
            filepath=filepath,
        )
    top = layer_order(config, flavor)
    weighted = [name for name, weights in layers if len(weights) and name in set(top)]
    order = [name for name in top if name in set(weighted)]
    if order != weighted:  # pragma: no cover - the config is put in this order before it is proved
        bad = next(i for i, (a, b) in enumerate(zip(order, weighted)) if a != b)
        raise WeightMismatchError(
            f"Keras would pair weighted layer #{bad} '{order[bad]}' with the weights of "
            f"'{weighted[bad]}'; nothing was written",
            filepath=filepath,
            layer=order[bad],
        )
