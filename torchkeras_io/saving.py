"""torch modules -> Keras: ``to_json`` / ``to_yaml`` / ``save_model``."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from typing import Optional, Sequence, Union

import h5py
from torch import nn

from . import __version__
from ._atomic import atomic_write_path
from ._export import KERAS_VERSION, export_config
from ._h5format import LayerRecord, write_weights_group
from ._keras.graph import KerasGraph
from ._optim import keras_variables, save_training
from ._plan import plan
from ._progress import check_compression, progress_bar, tensor_bytes
from ._v3format import chosen_format
from ._v3io import save_keras_model
from .errors import TorchKerasIOError, TorchKerasIOWarning, UnsupportedLayerError
from .registration import registered_name

InputShape = Union[tuple, list, None]
BatchAxis = Union[int, Sequence[int]]


def _unwrap(model: nn.Module) -> nn.Module:
    from .models import Model

    return model.module if isinstance(model, Model) else model


def _config(module: nn.Module, input_shape: InputShape, channels_last: bool, batch_axis: BatchAxis = 0):
    if isinstance(module, KerasGraph) and module.keras_config is not None:
        return module.keras_config, None
    config, sources, _ = export_config(module, input_shape, channels_last_io=channels_last, batch_axis=batch_axis)
    return config, sources


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
    return json.dumps(_config(_unwrap(module), input_shape, channels_last, batch_axis)[0])


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
    """
    from .models import Model

    gzip_level = check_compression(compression, compression_opts)

    if isinstance(model, Model):
        optimizer = model.optimizer if optimizer is None else optimizer
        loss = model.loss if loss is None else loss
        metrics = model.metrics if metrics is None else metrics
    module = _unwrap(model)
    if chosen_format(filepath, format, ".keras") == "keras":
        if compression is not None:
            raise TorchKerasIOError("compression applies to the legacy HDF5 format (an '.h5' name or format='h5')")
        config, sources = _config(module, input_shape, channels_last, batch_axis)
        save_keras_model(module, filepath, config, sources, optimizer=optimizer, loss=loss, metrics=metrics,
                         scheduler=scheduler, include_optimizer=include_optimizer, overwrite=overwrite)  # fmt: skip
        return
    torch_record = None
    try:
        config, sources = _config(module, input_shape, channels_last, batch_axis)
        records = _records(module, config, sources)
    except UnsupportedLayerError as exc:
        key = registered_name(module)
        if key is None:
            raise UnsupportedLayerError(
                f"{exc.message}. To save it anyway (weights plus a torch-side record that tkio.load_model "
                f"rebuilds), register {type(module).__name__} with @torchkeras_io.register_serializable() and give "
                "it a get_config()", layer=exc.layer) from exc  # fmt: skip
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
            f.attrs["keras_version"] = KERAS_VERSION
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
    if weights:  # pragma: no cover - every weight source names a layer of the config
        raise TorchKerasIOError(f"weights for layers missing from the config: {sorted(weights)}")
    return out


def _layer_entries(config: dict) -> list:
    cfg = config.get("config", {})
    layers = cfg if isinstance(cfg, list) else cfg.get("layers", [])
    if config.get("class_name") == "Sequential" and layers and layers[0].get("class_name") == "InputLayer":
        layers = layers[1:]  # Keras's Sequential.layers leaves the InputLayer out
    return layers
