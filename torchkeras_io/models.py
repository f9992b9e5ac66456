"""Keras models as torch modules: ``model_from_json`` / ``model_from_yaml`` / ``load_model``, and ``Model``."""

from __future__ import annotations

import json
import os
from typing import Optional, Union

import torch

from torchkeras_io._engine import model_io
from torchkeras_io._engine.rebuild import build_module
from torchkeras_io.errors import FileFormatError, TorchKerasIOError
from torchkeras_io.training import KERAS_OPTIMIZER_DEFAULTS, History, Model

__all__ = ["KERAS_OPTIMIZER_DEFAULTS", "History", "Model", "load_model", "model_from_json", "model_from_yaml"]

CustomObjects = Optional[dict]


def model_from_json(json_string: Union[str, bytes], *, custom_objects: CustomObjects = None,
                    safe_mode: bool = True) -> Model:  # fmt: skip
    """Build a native torch model from a Keras model config (any Keras generation).

    ``custom_objects`` maps a Keras class name, or a layer name, to a factory taking the layer's
    config dict and returning an ``nn.Module``. Stored Lambda code is never run.
    """
    return Model(build_module(json_string, None, custom_objects, safe_mode))


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
    return Model(build_module(json.loads(json.dumps(config)), None, custom_objects, safe_mode))


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
    loaded = model_io.load_model(filepath, custom_objects=custom_objects, compile=compile, device=device,
                                 safe_mode=safe_mode, allow_nonfinite=allow_nonfinite, progress=progress)  # fmt: skip
    model = Model(loaded.module)
    restored = loaded.training
    if restored is not None:
        model.optimizer, model.loss, model.metrics = restored.optimizer, restored.loss, restored.metrics
        if restored.scheduler is not None:
            model.scheduler = restored.scheduler
    model.eval()
    return model
