"""Keras models as torch modules: ``model_from_json`` / ``model_from_yaml`` / ``load_model``, and ``Model``."""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch

from torchkeras_io._engine.keras3 import load_keras_model
from torchkeras_io._formats.keras3 import sniff
from torchkeras_io._formats.legacy_model import read_model_file_info
from torchkeras_io._graph.graph import build_graph
from torchkeras_io._keras.config import parse_model_config
from torchkeras_io._layers.registry import BuildContext
from torchkeras_io.errors import FileFormatError, TorchKerasIOError, WeightMismatchError
from torchkeras_io.registration import lookup
from torchkeras_io.training import KERAS_OPTIMIZER_DEFAULTS, History, Model
from torchkeras_io.weights import load_weights

__all__ = ["KERAS_OPTIMIZER_DEFAULTS", "History", "Model", "load_model", "model_from_json", "model_from_yaml"]

CustomObjects = Optional[dict]


def _build(config, keras_version, custom_objects, safe_mode, filepath=None) -> Model:
    try:
        model_def = parse_model_config(config, keras_version)
        ctx = BuildContext(model_def.generation, dict(custom_objects or {}), bool(safe_mode), filepath)
        graph = build_graph(model_def, ctx)
    except TorchKerasIOError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError) as exc:
        if _raised_by_user_code(exc, custom_objects):  # a custom_objects factory's own error is the caller's
            raise
        # the builders expect a well-formed config; a value of the wrong type or range deep in a
        # layer config surfaces here
        raise FileFormatError(f"model config: cannot build the model ({type(exc).__name__}: {str(exc)[:300]})",
                              filepath=filepath) from exc  # fmt: skip
    graph.keras_config = json.loads(config) if isinstance(config, (str, bytes)) else config
    return Model(graph)


def _raised_by_user_code(exc: BaseException, custom_objects: CustomObjects) -> bool:
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


def model_from_json(json_string: Union[str, bytes], *, custom_objects: CustomObjects = None,
                    safe_mode: bool = True) -> Model:  # fmt: skip
    """Build a native torch model from a Keras model config (any Keras generation).

    ``custom_objects`` maps a Keras class name, or a layer name, to a factory taking the layer's
    config dict and returning an ``nn.Module``. Stored Lambda code is never run.
    """
    return _build(json_string, None, custom_objects, safe_mode)


def model_from_yaml(yaml_string: str, *, custom_objects: CustomObjects = None, safe_mode: bool = True) -> Model:
    """As :func:`model_from_json`, for the YAML form Keras 2 wrote (``to_yaml``). Needs PyYAML."""
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - PyYAML is a test dependency
        raise TorchKerasIOError("model_from_yaml needs PyYAML: pip install pyyaml") from exc
    try:
        config = yaml.safe_load(yaml_string)  # safe_load: no Python objects from the text
    except (yaml.YAMLError, RecursionError) as exc:
        raise FileFormatError(f"not valid YAML: {str(exc)[:500]}") from exc
    _check_yaml_size(config)
    return _build(json.loads(json.dumps(config)), None, custom_objects, safe_mode)


MAX_YAML_NODES = 10_000_000


def _check_yaml_size(config) -> None:
    """YAML aliases make a small text a huge (or cyclic) structure: count the nodes as JSON would
    spell them out, each shared one once per use, and refuse past ``MAX_YAML_NODES``."""
    sizes: dict = {}
    busy: set = set()

    def size(x, depth: int) -> int:
        if not isinstance(x, (dict, list)):
            return 1
        key = id(x)
        if key in sizes:
            return sizes[key]
        if key in busy:
            raise FileFormatError("YAML config refers to itself (a cyclic alias)")
        if depth > 500:
            raise FileFormatError("YAML config nested more than 500 deep")
        busy.add(key)
        items = list(x.values()) if isinstance(x, dict) else x
        total = 1 + sum(size(v, depth + 1) for v in items) + (len(x) if isinstance(x, dict) else 0)
        busy.discard(key)
        if total > MAX_YAML_NODES:
            raise FileFormatError(f"YAML config expands to more than {MAX_YAML_NODES} values (an alias bomb?)")
        sizes[key] = total
        return total

    size(config, 0)


# ------------------------------------------------------------------------------------ files
def load_model(filepath: Union[str, os.PathLike], *, custom_objects: CustomObjects = None, compile: bool = True,
               device: Union[str, torch.device, None] = None, safe_mode: bool = True,
               allow_nonfinite: bool = True, progress: Optional[bool] = None) -> Model:  # fmt: skip
    """Load a Keras model file as a native torch model with its weights: a full-model HDF5 or a
    ``.keras`` archive, told apart by their bytes (a ``.keras`` from Keras <= 2.12 is HDF5).

    ``allow_nonfinite=False`` refuses weights holding NaN or Inf (see :func:`load_weights`).
    ``progress`` (full-model HDF5): a tqdm bar while the weights load, as in :func:`load_weights`."""
    filepath = os.fspath(filepath)
    if sniff(filepath) == "zip":
        return load_keras_model(filepath, custom_objects=custom_objects, compile=compile, device=device,
                                safe_mode=safe_mode, allow_nonfinite=allow_nonfinite)  # fmt: skip
    info = read_model_file_info(filepath)
    if info.model_config is None and info.torch_config is not None:
        model = _load_torch_record(filepath, info.torch_config, custom_objects, device, allow_nonfinite)
        if compile and info.training_config:
            _compile_from_file(model, filepath, info, None, device)
        return model
    if info.model_config is None:
        raise FileFormatError("no 'model_config' attribute: this is a weights-only file; build the model "
                              "(model_from_json or your own module) and use load_weights", filepath=filepath)  # fmt: skip
    try:
        model = _build(info.model_config, info.keras_version, custom_objects, safe_mode, filepath)
    except TorchKerasIOError as exc:
        if exc.filepath is None:
            exc.filepath = filepath
            exc.args = (exc._format(),)
        raise
    names = model.keras_layer_names
    report = load_weights(model.module, filepath, by_name=True, layer_names=names, device=device,
                          allow_nonfinite=allow_nonfinite, progress=progress)  # fmt: skip
    if report.missing or report.unexpected:
        raise WeightMismatchError(
            f"the file's weights do not match its own model config: layers without weights in the file "
            f"{report.missing}, weights in the file for no layer {report.unexpected}", filepath=filepath)  # fmt: skip
    if compile and info.training_config:
        _compile_from_file(model, filepath, info, names, device)
    model.eval()
    return model


def _compile_from_file(model: Model, filepath: str, info, layer_names, device) -> None:
    """Set ``model.optimizer`` (and ``model.scheduler``), ``loss`` and ``metrics`` from the file."""
    from torchkeras_io._engine.optim import restore_for_model

    restored = restore_for_model(model.module, filepath, info.training_config, layer_names, device,
                                 info.keras_version)  # fmt: skip
    model.optimizer, model.loss, model.metrics = restored.optimizer, restored.loss, restored.metrics
    if restored.scheduler is not None:
        model.scheduler = restored.scheduler


def _load_torch_record(filepath: str, record_json: str, custom_objects: CustomObjects, device,
                       allow_nonfinite: bool = True) -> Model:  # fmt: skip
    """A module saved with a torch-side record: rebuilt from a registered class, never imported."""
    try:
        record = json.loads(record_json)
        key, config = record["registered_name"], record["config"]
        if not isinstance(key, str) or not isinstance(config, dict):
            raise TypeError("bad record")
    except (ValueError, KeyError, TypeError) as exc:
        raise FileFormatError(f"unreadable 'torch_config' attribute: {exc}", filepath=filepath) from exc
    factory = lookup(key, custom_objects)
    if factory is None:
        raise TorchKerasIOError(f"the file holds a torch module registered as '{key}'; register its class with "
                                "@torchkeras_io.register_serializable() or pass custom_objects={"
                                f"'{key}': cls}}", filepath=filepath)  # fmt: skip
    module = factory(**config)
    report = load_weights(module, filepath, by_name=True, device=device, allow_nonfinite=allow_nonfinite)
    if report.missing or report.unexpected or report.mismatched:
        raise WeightMismatchError(f"the weights do not fit the rebuilt '{key}':\n{report}", filepath=filepath)
    model = Model(module)
    model.eval()
    return model
