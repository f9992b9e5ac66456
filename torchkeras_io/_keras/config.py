"""Keras model configs of every generation, normalised to one graph form.

Dialects (docs/keras_formats.md §6): Keras 1 (list-style Sequential,
``Convolution2D``, ``border_mode``, 3-element node refs), Keras 2.0–2.1 (list-style Sequential),
Keras 2.2–2.3 and tf.keras (dict Sequential, ``[layer, node, tensor, kwargs]`` refs, nested
models counted from node 1), Keras 3 (``module``/``registered_name``, ``batch_shape``,
``{"args", "kwargs"}`` nodes with ``__keras_tensor__`` refs, nested models from node 0).

The result (:class:`ModelDef`) has Keras 2/3 class and argument names, explicit references to
(layer, call, output) and the model's inputs and outputs. Nothing is imported or executed.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Collection, Optional, Union

from torchkeras_io.errors import FileFormatError

MAX_DEPTH = 64  # nested models / wrappers; deeper configs are refused, not recursed into
MAX_VALUE_DEPTH = 512  # objects and lists inside one layer config (a wrapped model adds a few per level)

MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})


@dataclasses.dataclass(frozen=True)
class Ref:
    """Output ``tensor`` of call ``node`` of layer ``layer`` (calls counted in file order)."""

    layer: str
    node: int
    tensor: int


@dataclasses.dataclass
class Call:
    args: list  # Ref, constants, or (nested) lists of them
    kwargs: dict


@dataclasses.dataclass
class LayerDef:
    class_name: str
    name: str
    config: dict
    calls: list = dataclasses.field(default_factory=list)
    model: Optional[ModelDef] = None  # for nested Sequential / Functional models
    module: Optional[str] = None  # Keras 3's "module": tells a keras.ops node from a layer of the same class name


@dataclasses.dataclass
class ModelDef:
    kind: str  # "Sequential" or "Functional"
    name: str
    layers: list
    inputs: list  # of Ref (Functional) — Sequential models take one input
    outputs: list
    generation: int  # 1, 2 (Keras 2.x and tf.keras) or 3
    input_shape: Optional[tuple] = None  # Sequential: batch shape when the config gives one
    input_dtype: Optional[str] = None

    def layer(self, name: str) -> LayerDef:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


# ------------------------------------------------------------------------------ raw configs
def config_layers(config: Any, *, nested: bool = False) -> list:
    """The layer entries (``{"class_name", "config", ...}`` dicts) of a raw model config of any
    Keras generation, in config order, without a Sequential's InputLayer (Keras's ``model.layers``
    has none); a nested model is one entry. Nothing is checked: what is not a layer entry is left out.

    ``nested``: each entry is followed by the layers inside it, depth first: a nested model's
    (as listed here) and a wrapper's (``layer``, ``forward_layer``, ``backward_layer``)."""
    if not isinstance(config, dict):
        return []
    inner = config.get("config", config)
    layers = inner.get("layers") if isinstance(inner, dict) else inner  # Keras 1 / 2.0 Sequential: a list
    layers = [e for e in layers if isinstance(e, dict)] if isinstance(layers, list) else []
    if config.get("class_name") == "Sequential" and layers and layers[0].get("class_name") == "InputLayer":
        layers = layers[1:]
    if not nested:
        return layers
    out: list = []
    for entry in layers:
        _with_inner_layers(entry, out, 0)
    return out


def _with_inner_layers(entry: dict, out: list, depth: int) -> None:
    out.append(entry)
    if depth >= MAX_DEPTH:  # what the parser refuses is not walked into
        return
    if entry.get("class_name") in MODEL_CLASSES:
        for e in config_layers(entry):
            _with_inner_layers(e, out, depth + 1)
        return
    cfg = entry.get("config")
    for key in ("layer", "forward_layer", "backward_layer") if isinstance(cfg, dict) else ():
        if isinstance(cfg.get(key), dict):
            _with_inner_layers(cfg[key], out, depth + 1)


def entry_name(entry: dict) -> Optional[str]:
    """The layer name of a raw layer entry: the entry's own (Keras 1/2 functional), else its
    config's, the precedence the parser gives them (:func:`parse_layer`)."""
    cfg = entry.get("config")
    for name in (entry.get("name"), (cfg.get("name") if isinstance(cfg, dict) else None)):
        if isinstance(name, str):
            return name
    return None


# ------------------------------------------------------------------------------------ Keras 1
_K1_CLASSES = {
    "Convolution1D": "Conv1D",
    "Convolution2D": "Conv2D",
    "Convolution3D": "Conv3D",
    "AtrousConvolution1D": "Conv1D",
    "AtrousConvolution2D": "Conv2D",
    "Deconvolution2D": "Conv2DTranspose",
    "SeparableConvolution2D": "SeparableConv2D",
}
_K1_COMMON = {
    "init": "kernel_initializer",
    "W_regularizer": "kernel_regularizer",
    "b_regularizer": "bias_regularizer",
    "W_constraint": "kernel_constraint",
    "b_constraint": "bias_constraint",
    "bias": "use_bias",
    "border_mode": "padding",
    "nb_filter": "filters",
    "subsample_length": "strides",
    "subsample": "strides",
    "filter_length": "kernel_size",
    "atrous_rate": "dilation_rate",
    "pool_length": "pool_size",
    "stride": "strides",
    "output_dim": "units",
    "inner_init": "recurrent_initializer",
    "inner_activation": "recurrent_activation",
    "U_regularizer": "recurrent_regularizer",
    "dropout_W": "dropout",
    "dropout_U": "recurrent_dropout",
    "p": "rate",
    "beta_init": "beta_initializer",
    "gamma_init": "gamma_initializer",
}
_K1_DIM_ORDERING = {"tf": "channels_last", "th": "channels_first", "default": "channels_last"}
_K1_MERGE = {"sum": "Add", "mul": "Multiply", "concat": "Concatenate", "ave": "Average", "max": "Maximum",
             "dot": "Dot", "cos": "Dot"}  # fmt: skip


def _keras1_layer(class_name: str, cfg: dict) -> tuple[str, dict]:
    cls = _K1_CLASSES.get(class_name, class_name)
    out = {}
    for key, value in cfg.items():
        out[_K1_COMMON.get(key, key)] = value
    if "nb_row" in cfg:
        out["kernel_size"] = [cfg["nb_row"], cfg["nb_col"]]
        out.pop("nb_row"), out.pop("nb_col", None)
    if "kernel_dim1" in cfg:
        out["kernel_size"] = [cfg["kernel_dim1"], cfg["kernel_dim2"], cfg["kernel_dim3"]]
        for k in ("kernel_dim1", "kernel_dim2", "kernel_dim3"):
            out.pop(k, None)
    if "dim_ordering" in cfg:
        out["data_format"] = _K1_DIM_ORDERING.get(cfg["dim_ordering"], "channels_last")
        out.pop("dim_ordering")
    if cls in ("Dense", "Embedding") or cls.endswith("RNN") or cls in ("LSTM", "GRU"):
        pass
    if cls == "Embedding" and "kernel_initializer" in out:
        out["embeddings_initializer"] = out.pop("kernel_initializer")
    if cls == "Embedding" and "kernel_regularizer" in out:
        out["embeddings_regularizer"] = out.pop("kernel_regularizer")
    if cls == "LSTM" and "forget_bias_init" in out:
        out["unit_forget_bias"] = out.pop("forget_bias_init") == "one"
    if cls == "GRU":
        out.setdefault("reset_after", False)
    if cls == "Merge":
        mode = cfg.get("mode", "sum")
        if not isinstance(mode, str) or mode not in _K1_MERGE:
            return "Merge", out  # a Python function: only a custom object can stand for it
        cls = _K1_MERGE[mode]
        if cls == "Concatenate":
            out["axis"] = cfg.get("concat_axis", -1)
        if cls == "Dot":
            out["axes"] = cfg.get("dot_axes", -1)
            out["normalize"] = mode == "cos"
    if "input_dim" in cfg and "batch_input_shape" not in cfg and class_name not in ("Embedding",):
        length = cfg.get("input_length")
        out["batch_input_shape"] = (
            [None, length, cfg["input_dim"]] if "input_length" in cfg else [None, cfg["input_dim"]]
        )
    for k in ("input_dim", "input_length", "input_dtype", "consume_less") if cls != "Embedding" else ("input_dtype",):
        out.pop(k, None)
    return cls, out


def keras2_config(config: dict) -> dict:
    """A raw model config of any Keras 1/2 dialect in the Keras 2.2+ one, which the Keras 3
    conversion (:func:`._keras.keras3.to_keras3`) reads: a list-style Sequential config (Keras 1,
    2.0–2.1) becomes ``{"name", "layers"}``, and a Keras 1 config's classes and arguments get
    their Keras 2 names (as the parser gives them), wrapped layers and nested models included.
    Anything else is returned as it is; ``config`` is not modified."""
    keras1 = generation_of(None, config) == 1
    if not keras1 and not _has_list_sequential(config, 0):
        return config
    return _keras2_entry(config, keras1, 0)


def _has_list_sequential(entry: Any, depth: int) -> bool:
    if depth > MAX_DEPTH or not isinstance(entry, dict) or entry.get("class_name") not in MODEL_CLASSES:
        return False
    cfg = entry.get("config")
    return isinstance(cfg, list) or any(_has_list_sequential(e, depth + 1) for e in config_layers(entry))


def _keras2_entry(entry: Any, keras1: bool, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _fail(f"models nested more than {MAX_DEPTH} deep")
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), (dict, list)):
        return entry
    class_name, cfg = entry.get("class_name"), entry["config"]
    out = dict(entry)
    if class_name in MODEL_CLASSES:
        if isinstance(cfg, list):
            cfg = {"name": entry_name(entry) or "sequential", "layers": cfg}
        cfg = dict(cfg)
        if isinstance(cfg.get("layers"), list):
            cfg["layers"] = [_keras2_entry(e, keras1, depth + 1) for e in cfg["layers"]]
    elif keras1 and isinstance(class_name, str) and isinstance(cfg, dict):
        class_name, cfg = _keras1_layer(class_name, cfg)
        for key in ("layer", "backward_layer"):  # wrappers
            if key in cfg:
                cfg[key] = _keras2_entry(cfg[key], keras1, depth + 1)
    out["class_name"], out["config"] = class_name, cfg
    return out


# ------------------------------------------------------------------------------------ helpers
def _fail(msg: str) -> FileFormatError:
    return FileFormatError(f"model config: {msg}")


def _index(x: Any) -> int:
    """A node or tensor index of a reference (an int, or a float or string spelling one)."""
    try:
        value = int(x)
    except (TypeError, ValueError, OverflowError):
        raise _fail(f"bad node/tensor index {str(x)[:50]!r}") from None
    if isinstance(x, bool) or value != x and str(value) != x:
        raise _fail(f"bad node/tensor index {str(x)[:50]!r}")
    return value


def _as_dict(x: Any, what: str) -> dict:
    if not isinstance(x, dict):
        raise _fail(f"{what} is a {type(x).__name__}, expected an object")
    return x


def _dtype_name(dtype: Any) -> Optional[str]:
    """'float32', or the policy name of a DTypePolicy / Policy dict (mixed precision: variable dtype)."""
    if dtype is None or isinstance(dtype, str):
        return dtype
    if isinstance(dtype, dict):
        name = _as_dict(dtype.get("config", {}), "dtype policy").get("name")
        if isinstance(name, str):
            return {"mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}.get(name, name)
    raise _fail(f"unreadable dtype {dtype!r}")


def _strip_envelope(entry: dict, registered: Collection[str]) -> tuple[str, dict]:
    class_name = entry.get("class_name")
    if not isinstance(class_name, str):
        raise _fail(f"layer entry without a class name: {str(entry)[:200]}")
    # Keras class names are plain names, never import paths; tf-keras writes a class registered
    # with register_keras_serializable as "Package>Name" (InceptionResNetV2's "Custom>CustomScaleLayer")
    if not class_name.isidentifier() and not (">" in class_name and class_name in registered):
        raise _fail(f"class name {class_name[:200]!r} is not a Keras class name")
    cfg = entry.get("config", {})
    if cfg is None:
        cfg = {}
    if not isinstance(cfg, (dict, list)):
        raise _fail(f"layer '{class_name}' has a config of type {type(cfg).__name__}")
    return class_name, cfg


def generation_of(keras_version: Optional[str], cfg: dict) -> int:
    """1, 2 or 3, from the writer's version, or guessed from the config's shape."""
    if keras_version:
        major = keras_version.split(".")[0]
        if major.isdigit():
            return min(max(int(major), 1), 3)
    text = json.dumps(cfg)[:200000]
    if "__keras_tensor__" in text or '"batch_shape"' in text or '"registered_name"' in text:
        return 3
    return 1 if _has_keras1_layer(cfg, 0) else 2


_K1_KEYS = frozenset({"border_mode", "nb_filter", "W_regularizer", "dim_ordering", "inner_init", "inner_activation"})


def _has_keras1_layer(entry: Any, depth: int) -> bool:
    """Whether a layer entry (a model's: any of its layers) has an argument only Keras 1 writes.
    ``output_dim`` counts but in an Embedding, whose Keras 2 config keeps the name."""
    if depth > MAX_DEPTH or not isinstance(entry, dict):
        return False
    cfg = entry.get("config")
    if entry.get("class_name") in MODEL_CLASSES:
        layers = cfg.get("layers") if isinstance(cfg, dict) else cfg
        return isinstance(layers, list) and any(_has_keras1_layer(e, depth + 1) for e in layers)
    if not isinstance(cfg, dict):
        return False
    if _K1_KEYS.intersection(cfg) or "output_dim" in cfg and entry.get("class_name") != "Embedding":
        return True
    return any(_has_keras1_layer(cfg.get(key), depth + 1) for key in ("layer", "backward_layer"))


# ------------------------------------------------------------------------------------ numbers
def _numpy_value(x: dict) -> tuple[bool, Any]:
    """(True, value) when ``x`` is a numpy array or tensor as some Keras serialised it.

    Keras 2.1-2.2 and tf.keras 1.x: ``{"type": "ndarray", "value": v}`` (their JSON encoder
    turned an ndarray into ``{"type": type(obj), ...}`` and the class itself into its name; a
    0-d array gives a scalar ``v``). Keras 3 and tf-keras's new serialisation:
    ``{"class_name": "__numpy__" | "__tensor__", "config": {"value": v, "dtype": ...}}``.
    """
    if x.keys() == {"type", "value"} and x["type"] == "ndarray":
        return True, x["value"]
    if x.get("class_name") in ("__numpy__", "__tensor__") and isinstance(x.get("config"), dict):
        if "value" in x["config"] and x.keys() <= {"class_name", "config", "module", "registered_name"}:
            return True, x["config"]["value"]
    return False, None


def plain_numbers(x: Any, depth: int = 0) -> Any:
    """``x`` with every numpy encoding (:func:`_numpy_value`) replaced by plain numbers / lists."""
    if depth > MAX_VALUE_DEPTH:
        raise _fail("config values nested too deeply")
    if isinstance(x, dict):
        found, value = _numpy_value(x)
        if found:
            return plain_numbers(value, depth + 1)
        return {k: plain_numbers(v, depth + 1) for k, v in x.items()}
    if isinstance(x, list):
        return [plain_numbers(v, depth + 1) for v in x]
    return x


def _is_nan(x: Any) -> bool:
    return isinstance(x, float) and x != x


# ------------------------------------------------------------------------------------ layers
def _layer_config(
    class_name: str, cfg: dict, generation: int, depth: int, registered: Collection[str]
) -> tuple[str, dict]:
    # numbers first, so that every builder reads plain Python numbers whatever wrote the file
    cfg = plain_numbers(cfg)
    if _is_nan(cfg.get("max_value")):  # Keras 2.2 / tf.keras 1.x stored max_value=None as float32(NaN)
        cfg["max_value"] = None
    if generation == 1:
        class_name, cfg = _keras1_layer(class_name, cfg)
    if "dtype" in cfg:
        cfg["dtype"] = _dtype_name(cfg["dtype"])
    if "batch_shape" in cfg and "batch_input_shape" not in cfg:
        cfg["batch_input_shape"] = cfg.pop("batch_shape")
    for wrapped_key in ("layer", "backward_layer"):
        inner = cfg.get(wrapped_key)
        if isinstance(inner, dict) and "class_name" in inner:
            inner_cls, inner_cfg = _strip_envelope(inner, registered)
            if not isinstance(inner_cfg, dict):
                raise _fail(f"wrapped layer of '{cfg.get('name')}' has a list config")
            inner_cls, inner_cfg = _layer_config(inner_cls, inner_cfg, generation, depth + 1, registered)
            cfg[wrapped_key] = {"class_name": inner_cls, "config": inner_cfg}
    return class_name, cfg


def _is_ref(x: Any, layer_names: set) -> bool:
    return (isinstance(x, list) and len(x) == 3 and isinstance(x[0], str) and x[0] in layer_names
            and isinstance(x[1], int) and isinstance(x[2], int))  # fmt: skip


def _parse_value(x: Any, layer_names: set, depth: int = 0) -> Any:
    """Keras 2 kwargs / Keras 3 args: keras-tensor references become :class:`Ref`."""
    if depth > MAX_DEPTH:
        raise _fail("call arguments nested too deeply")
    if isinstance(x, dict):
        found, value = _numpy_value(x)
        if found:
            return plain_numbers(value, depth + 1)
        if x.get("class_name") == "__keras_tensor__":
            hist = _as_dict(x.get("config"), "__keras_tensor__").get("keras_history")
            if not (isinstance(hist, list) and len(hist) == 3 and isinstance(hist[0], str)):
                raise _fail(f"bad keras_history {hist!r}")
            return Ref(hist[0], _index(hist[1]), _index(hist[2]))
        return {k: _parse_value(v, layer_names, depth + 1) for k, v in x.items()}
    if _is_ref(x, layer_names):
        return Ref(x[0], x[1], x[2])
    if isinstance(x, list):
        return [_parse_value(v, layer_names, depth + 1) for v in x]
    return x


def _parse_calls(inbound: Any, layer_names: set, generation: int) -> list:
    if inbound is None:
        return []
    if not isinstance(inbound, list):
        raise _fail("inbound_nodes is not a list")
    calls = []
    for node in inbound:
        if isinstance(node, dict) and ("args" in node or "kwargs" in node):  # Keras 3
            args = _parse_value(node.get("args", []), layer_names)
            kwargs = _parse_value(node.get("kwargs", {}) or {}, layer_names)
            calls.append(Call(list(args), dict(kwargs)))
            continue
        if not isinstance(node, list):
            raise _fail(f"inbound node {str(node)[:100]} is neither a list nor an args/kwargs object")
        if node and isinstance(node[0], str):  # tf.keras writes a one-tensor call as the bare entry
            node = [node]
        tensors, kwargs = [], {}
        for entry in node:
            if not (isinstance(entry, list) and len(entry) >= 3 and isinstance(entry[0], str)):
                raise _fail(f"bad inbound tensor reference {str(entry)[:100]}")
            if entry[0] == "_CONSTANT_VALUE":
                tensors.append(plain_numbers(entry[2]))
            else:
                tensors.append(Ref(entry[0], _index(entry[1]), _index(entry[2])))
            if len(entry) > 3 and entry[3]:
                kwargs.update(_parse_value(_as_dict(entry[3], "call kwargs"), layer_names))
        calls.append(Call([tensors[0]] if len(tensors) == 1 else [tensors], kwargs))
    return calls


def _refs(spec: Any, what: str) -> list:
    """input_layers / output_layers: one [name, node, tensor] or a list (or dict) of them."""
    if spec is None:
        return []
    if isinstance(spec, dict):
        spec = list(spec.values())
    if isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str):
        spec = [spec]
    if not isinstance(spec, list):
        raise _fail(f"{what} is not a list")
    out = []
    for item in spec:
        if isinstance(item, dict) and "class_name" in item:  # Keras 3 may nest keras tensors
            out.append(_parse_value(item, set()))
        elif isinstance(item, list) and len(item) >= 3 and isinstance(item[0], str):
            out.append(Ref(item[0], _index(item[1]), _index(item[2])))
        else:
            raise _fail(f"bad entry in {what}: {str(item)[:100]}")
    return out


# ------------------------------------------------------------------------------------ models
def parse_model_config(config: Union[str, bytes, dict], keras_version: Optional[str] = None, *,
                       registered: Collection[str] = ()) -> ModelDef:  # fmt: skip
    """Normalise a ``model_config`` (JSON text or parsed) of any Keras generation.

    ``registered``: the "Package>Name" class names (``register_keras_serializable`` names, such as
    InceptionResNetV2's "Custom>CustomScaleLayer") accepted as they are; any other class name
    must be a plain identifier, never an import path. The graph builder passes the names it
    builds (``_layers.registry.BUILDERS``)."""
    if isinstance(config, (bytes, bytearray)):
        config = config.decode("utf-8")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except (ValueError, RecursionError) as exc:
            raise _fail(f"not valid JSON: {exc}") from exc
    config = _as_dict(config, "model config")
    if isinstance(config.get("config"), str):  # some tools store the JSON twice-encoded
        return parse_model_config(config["config"], keras_version, registered=registered)
    if keras_version is None and isinstance(config.get("keras_version"), str):
        keras_version = config["keras_version"]  # to_json() of Keras 2 / tf_keras says who wrote it
    generation = generation_of(keras_version, config)
    return _model(config, generation, 0, registered)


def _model(entry: dict, generation: int, depth: int, registered: Collection[str]) -> ModelDef:
    if depth > MAX_DEPTH:
        raise _fail(f"models nested more than {MAX_DEPTH} deep")
    class_name, cfg = _strip_envelope(entry, registered)
    if class_name == "Sequential":
        return _sequential(cfg, generation, depth, registered)
    if class_name in ("Functional", "Model") or (isinstance(cfg, dict) and "input_layers" in cfg):
        return _functional(_as_dict(cfg, "functional config"), generation, depth, registered)
    raise _fail(f"'{class_name}' is not a Sequential or Functional model")


def parse_layer(entry: dict, generation: int, depth: int, registered: Collection[str] = ()) -> LayerDef:
    """One layer entry of a model config (a nested model's entry: a :class:`LayerDef` with ``model``)."""
    class_name, cfg = _strip_envelope(entry, registered)
    if class_name in MODEL_CLASSES or (isinstance(cfg, dict) and ("layers" in cfg and "input_layers" in cfg)):
        sub = _model({"class_name": "Sequential" if class_name == "Sequential" else "Functional", "config": cfg},
                     generation, depth + 1, registered)  # fmt: skip
        name = entry.get("name") or (cfg.get("name") if isinstance(cfg, dict) else None) or sub.name
        trainable = cfg.get("trainable", True) if isinstance(cfg, dict) else True
        return LayerDef(sub.kind, name, {"name": name, "trainable": trainable}, [], sub)
    if not isinstance(cfg, dict):
        raise _fail(f"layer '{class_name}' has a list config")
    class_name, cfg = _layer_config(class_name, cfg, generation, depth, registered)
    name = entry.get("name") or cfg.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(f"a '{class_name}' layer has no name")
    module = entry.get("module")
    return LayerDef(class_name, name, cfg, module=module if isinstance(module, str) else None)


def _sequential(cfg: Any, generation: int, depth: int, registered: Collection[str]) -> ModelDef:
    if isinstance(cfg, list):  # Keras 1 / 2.0–2.1
        name, entries, build_shape = "sequential", cfg, None
    else:
        cfg = _as_dict(cfg, "Sequential config")
        name, entries, build_shape = cfg.get("name", "sequential"), cfg.get("layers"), cfg.get("build_input_shape")
    if not isinstance(entries, list):
        raise _fail("Sequential config has no layer list")
    layers = [parse_layer(_as_dict(e, "layer entry"), generation, depth, registered) for e in entries]
    shape, dtype = None, None
    if layers and layers[0].class_name == "InputLayer":
        first = layers.pop(0)
        shape, dtype = first.config.get("batch_input_shape"), first.config.get("dtype")
    elif layers and "batch_input_shape" in layers[0].config:
        shape, dtype = layers[0].config["batch_input_shape"], layers[0].config.get("dtype")
    elif layers and "input_shape" in layers[0].config:
        shape = [None] + list(layers[0].config["input_shape"])
    elif build_shape is not None:
        shape = build_shape
    if shape is not None and not (isinstance(shape, list) and all(s is None or isinstance(s, int) for s in shape)):
        raise _fail(f"Sequential '{name}' has an unreadable input shape {str(shape)[:100]}")
    _check_unique(layers, name)
    return ModelDef("Sequential", name, layers, [], [], generation, tuple(shape) if shape else None, dtype)


def _functional(cfg: dict, generation: int, depth: int, registered: Collection[str]) -> ModelDef:
    name = cfg.get("name", "model")
    entries = cfg.get("layers")
    if not isinstance(entries, list):
        raise _fail(f"functional model '{name}' has no layer list")
    layers, raw_nodes = [], []
    for e in entries:
        e = _as_dict(e, "layer entry")
        layer = parse_layer(e, generation, depth, registered)
        if isinstance(e.get("name"), str):
            layer.name = e["name"]
        layers.append(layer)
        raw_nodes.append(e.get("inbound_nodes"))
    _check_unique(layers, name)
    names = {layer.name for layer in layers}
    for layer, inbound in zip(layers, raw_nodes):
        layer.calls = _parse_calls(inbound, names, generation)
    model = ModelDef("Functional", name, layers, _refs(cfg.get("input_layers"), "input_layers"),
                     _refs(cfg.get("output_layers"), "output_layers"), generation)  # fmt: skip
    _renumber_nested_nodes(model)
    for ref in model.inputs + model.outputs:
        if not isinstance(ref, Ref) or ref.layer not in names:
            raise _fail(f"model '{name}' names an unknown input/output layer {ref!r}")
    return model


def _check_unique(layers: list, model: str) -> None:
    seen = set()
    for layer in layers:
        if layer.name in seen:
            raise _fail(f"model '{model}' has two layers named '{layer.name}'")
        seen.add(layer.name)


def _walk_refs(x: Any):
    if isinstance(x, Ref):
        yield x
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _walk_refs(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _walk_refs(v)


def _renumber_keras3_outputs(model: ModelDef) -> None:
    """Keras 3 counts a nested Functional model's calls from 1 in ``input_layers`` / ``output_layers``
    only (``Functional.get_config``: "Functional models start with a pre-existing node"), while
    the ``keras_history`` of call arguments counts them from 0 (``serialize_node`` drops the
    nodes outside the model). Loading, ``functional_from_config`` subtracts 1 and indexes the
    calls with it, so a 0 written there (as some writers did) means the last call. Nested
    Sequential models are not Functional in Keras 3: their calls count from 0 everywhere.
    """
    calls = {layer.name: len(layer.calls) for layer in model.layers
             if layer.model is not None and layer.model.kind == "Functional"}  # fmt: skip

    def fix(ref: Any) -> Any:
        if not isinstance(ref, Ref) or ref.layer not in calls:
            return ref
        node = ref.node - 1
        return Ref(ref.layer, node if node >= 0 else calls[ref.layer] + node, ref.tensor)

    model.inputs = [fix(r) for r in model.inputs]
    model.outputs = [fix(r) for r in model.outputs]


def _renumber_nested_nodes(model: ModelDef) -> None:
    """Keras 1/2 count a nested model's calls from 1 (its own first node is skipped, not dropped).

    tf-keras (``_should_skip_first_node``) and Keras 2.x count from 1 when the nested model has a
    node of its own from being built on its Input, and from 0 otherwise (a Sequential model built
    without an input shape); every call of a nested model in the graph is referenced, so the
    indices used tell which: ``1..n`` for ``n`` calls counted from 1, ``0..n-1`` from 0.
    """
    if model.generation >= 3:
        _renumber_keras3_outputs(model)
        return
    by_name = {layer.name: layer for layer in model.layers}
    refs = [r for layer in model.layers for c in layer.calls for r in _walk_refs([c.args, c.kwargs])] + model.outputs
    shift = {}
    for layer in model.layers:
        if layer.model is None:
            continue
        used = [r.node for r in refs if r.layer == layer.name]
        if used and max(used) >= len(layer.calls) and min(used) >= 1:
            shift[layer.name] = 1
    if not shift:
        return

    def fix(x):
        if isinstance(x, Ref):
            return Ref(x.layer, x.node - shift.get(x.layer, 0), x.tensor)
        if isinstance(x, list):
            return [fix(v) for v in x]
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        return x

    for layer in model.layers:
        for call in layer.calls:
            call.args, call.kwargs = fix(call.args), fix(call.kwargs)
    model.outputs = fix(model.outputs)
    for layer in by_name.values():
        for call in layer.calls:
            for r in _walk_refs([call.args, call.kwargs]):
                if r.node < 0:
                    raise _fail(f"negative node index for layer '{r.layer}'")
