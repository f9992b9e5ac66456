"""Keras models as torch modules: ``model_from_json`` / ``model_from_yaml`` / ``load_model``, and ``Model``."""

from __future__ import annotations

import json
import os
import warnings
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from ._adapters.registry import BuildContext
from ._h5model import read_model_file_info
from ._keras.config import parse_model_config
from ._keras.graph import KerasGraph, build_graph
from .errors import FileFormatError, TorchKerasIOError, TorchKerasIOWarning, WeightMismatchError
from .registration import lookup
from .weights import LoadReport, load_weights, save_weights

CustomObjects = Optional[dict]


class Model(nn.Module):
    """A torch module with Keras's model workflow around it.

    ``model.module`` is the underlying network (for models built from Keras configs, a
    :class:`KerasGraph` whose forward takes inputs in the Keras model's own layout).
    """

    def __init__(self, module: nn.Module, optimizer=None, loss=None, metrics=None) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TorchKerasIOError(f"Model wraps an nn.Module, got {type(module).__name__}")
        self.module = module
        self.optimizer = optimizer
        self.loss = loss
        self.metrics = metrics

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @property
    def keras_layer_names(self) -> Optional[dict]:
        """``{module path: Keras layer name}`` when the network came from a Keras config."""
        return self.module.keras_layer_names() if isinstance(self.module, KerasGraph) else None

    def _device(self) -> torch.device:
        for t in self.module.parameters():
            return t.device
        return torch.device("cpu")

    @torch.no_grad()
    def predict(self, x, batch_size: int = 32):
        """Outputs as numpy arrays, computed in batches in eval mode (several inputs: a list)."""
        inputs = list(x) if isinstance(x, (list, tuple)) else [x]
        inputs = [torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v) for v in inputs]
        n = inputs[0].shape[0]
        was_training = self.module.training
        self.module.eval()
        device = self._device()
        chunks = []
        try:
            for start in range(0, n, batch_size):
                out = self.module(*[v[start : start + batch_size].to(device) for v in inputs])
                chunks.append(out if isinstance(out, tuple) else (out,))
        finally:
            self.module.train(was_training)
        outs = [torch.cat([c[i] for c in chunks]).cpu().numpy() for i in range(len(chunks[0]))] if chunks else []
        return outs[0] if len(outs) == 1 else outs

    def save_weights(self, filepath, overwrite: bool = True) -> None:
        save_weights(self.module, filepath, overwrite=overwrite, layer_names=self.keras_layer_names)

    def load_weights(self, filepath, by_name: bool = False, skip_mismatch: bool = False,
                     reshape: bool = False) -> LoadReport:  # fmt: skip
        return load_weights(self.module, filepath, by_name=by_name, skip_mismatch=skip_mismatch, reshape=reshape,
                            layer_names=self.keras_layer_names)  # fmt: skip


# ------------------------------------------------------------------------------------ configs
def _build(config, keras_version, custom_objects, safe_mode, filepath=None) -> Model:
    model_def = parse_model_config(config, keras_version)
    ctx = BuildContext(model_def.generation, dict(custom_objects or {}), bool(safe_mode), filepath)
    graph = build_graph(model_def, ctx)
    graph.keras_config = json.loads(config) if isinstance(config, (str, bytes)) else config
    return Model(graph)


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
    except yaml.YAMLError as exc:
        raise FileFormatError(f"not valid YAML: {exc}") from exc
    return _build(json.loads(json.dumps(config)), None, custom_objects, safe_mode)


# ------------------------------------------------------------------------------------ files
def load_model(filepath: Union[str, os.PathLike], *, custom_objects: CustomObjects = None, compile: bool = True,
               device: Union[str, torch.device, None] = None, safe_mode: bool = True) -> Model:  # fmt: skip
    """Load a Keras full-model HDF5 file as a native torch model with its weights."""
    filepath = os.fspath(filepath)
    info = read_model_file_info(filepath)
    if info.model_config is None and info.torch_config is not None:
        return _load_torch_record(filepath, info.torch_config, custom_objects, device)
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
    report = load_weights(model.module, filepath, by_name=True, layer_names=names, device=device)
    if report.missing or report.unexpected:
        raise WeightMismatchError(
            f"the file's weights do not match its own model config: layers without weights in the file "
            f"{report.missing}, weights in the file for no layer {report.unexpected}", filepath=filepath)  # fmt: skip
    if compile and info.training_config:
        warnings.warn(f"{filepath}: restoring the training configuration (optimizer, loss) is not supported yet; "
                      "the model is returned uncompiled", TorchKerasIOWarning, stacklevel=2)  # fmt: skip
    model.eval()
    return model


def _load_torch_record(filepath: str, record_json: str, custom_objects: CustomObjects, device) -> Model:
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
    report = load_weights(module, filepath, by_name=True, device=device)
    if report.missing or report.unexpected or report.mismatched:
        raise WeightMismatchError(f"the weights do not fit the rebuilt '{key}':\n{report}", filepath=filepath)
    model = Model(module)
    model.eval()
    return model
