"""Keras-2-style model configs (what :mod:`torchkeras_io._graph.export` writes) in the Keras 3 ``.keras`` dialect.

Keras 3 deserializes ``config.json`` by ``module`` + ``class_name`` (docs/keras_formats.md §6.5,
§6.7): every object carries ``module`` and ``registered_name``; ``InputLayer`` has
``batch_shape``; Functional nodes are ``{"args": [...], "kwargs": {...}}`` with
``__keras_tensor__`` references; a nested model's calls are renumbered as Keras 3 numbers them
(:func:`_nested_numbering`). tf-keras-only layer
arguments (``MultiHeadAttention``'s ``query_shape``/``key_shape``/``value_shape``) become the
layer's ``build_config``. Also: :func:`layer_entries`, the layers of a Keras 3 config with the
store path Keras 3 gives each one; :func:`legal_names`, tf-keras's '/' names made Keras 3 names.
"""

from __future__ import annotations

import contextlib
import copy
import re
from typing import Any, Optional

from torchkeras_io._keras.config import MODEL_CLASSES, config_layers, entry_name, keras2_config
from torchkeras_io._keras.ops_export import keras3_op, keras_tensor
from torchkeras_io._keras.order import is_ref, layer_order

_OBJECT_MODULES = {"_initializer": "keras.initializers", "_regularizer": "keras.regularizers",
                   "_constraint": "keras.constraints"}  # fmt: skip


def keras_snake(name: str, *, split_digits: bool = False) -> str:
    """Keras's ``naming.to_snake_case`` (``Conv2D`` -> ``conv2d``, ``PReLU`` -> ``p_re_lu``).

    ``split_digits``: a digit before a capital splits too (``Conv2D`` -> ``conv2_d``), as the names
    this library gives torch classes always have (the root module's layer, an exported model's
    name): files written before keep reading the same."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z0-9])([A-Z])" if split_digits else "([a-z])([A-Z])", r"\1_\2", name).lower()


def _obj(module: str, class_name: str, config: Any) -> dict:
    return {"module": module, "class_name": class_name, "config": config, "registered_name": None}


def _nested_objects(cfg: dict) -> None:
    """Initializers, regularizers and constraints given as ``{class_name, config}`` get a module."""
    for key, value in list(cfg.items()):
        if isinstance(value, dict) and "class_name" in value and "module" not in value:
            for suffix, module in _OBJECT_MODULES.items():
                if key.endswith(suffix):
                    cfg[key] = _obj(module, value["class_name"], value.get("config", {}))


def _nested_numbering(cfg: dict) -> dict:
    """``{nested model name: the index Keras 2 gives its first call here}`` for a Keras 2 config.

    tf-keras (``_should_skip_first_node``) and Keras 2 count a nested model's calls from 1 when the
    model has a node of its own from being built on its ``Input`` (every Functional, a Sequential
    with an input shape), from 0 otherwise (a Sequential built by its first call). Every call kept
    in the config feeds an output, so the indices used are ``1..n`` or ``0..n-1`` for ``n`` calls:
    one reaching ``n`` tells the first (as the loader reads them, ``config._renumber_nested_nodes``).
    """
    layers = cfg.get("layers", [])
    calls = {entry.get("name", entry.get("config", {}).get("name")): len(entry.get("inbound_nodes") or [])
             for entry in layers if entry.get("class_name") in MODEL_CLASSES}  # fmt: skip
    used: dict = {name: [] for name in calls}

    def walk(x: Any) -> None:
        if is_ref(x):
            if x[0] in used:
                used[x[0]].append(x[1])
            if len(x) > 3:
                walk(x[3])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    walk([entry.get("inbound_nodes", []) for entry in layers])
    walk([cfg.get("input_layers", []), cfg.get("output_layers", [])])
    return {name: 1 if used[name] and max(used[name]) >= n and min(used[name]) >= 1 else 0
            for name, n in calls.items()}  # fmt: skip


def _convert_value(x: Any, nested: dict) -> Any:
    if is_ref(x):
        return keras_tensor(x, nested)
    if isinstance(x, list):
        return [_convert_value(v, nested) for v in x]
    if isinstance(x, dict):
        return {k: _convert_value(v, nested) for k, v in x.items()}
    return x


def _nodes(inbound: list, nested: dict, class_name: Optional[str] = None) -> list:
    out = []
    for node in inbound:
        if isinstance(node, dict):  # already Keras 3
            out.append(node)
            continue
        if node and isinstance(node[0], str):  # tf-keras writes a one-tensor call (TFOpLambda) as the bare entry
            node = [node]
        kwargs = {}
        for entry in node:
            if len(entry) > 3 and isinstance(entry[3], dict):
                kwargs.update(entry[3])
        tensors = [keras_tensor(entry, nested) for entry in node]
        args = [tensors[0]] if len(tensors) == 1 else [tensors]
        if class_name == "MultiHeadAttention" and len(tensors) == 1 and "value" in kwargs:
            args.append(_convert_value(kwargs.pop("value"), nested))  # Keras 3 writes call(query, value)
        out.append({"args": args, "kwargs": _convert_value(kwargs, nested)})
    return out


def _layer_config(class_name: str, cfg: dict) -> tuple:
    """(Keras 3 layer config, build_config or None)."""
    cfg = dict(cfg)
    build = None
    if class_name == "InputLayer":
        if "batch_input_shape" in cfg:
            cfg["batch_shape"] = cfg.pop("batch_input_shape")
        cfg.setdefault("optional", False)
        return cfg, None
    cfg.pop("batch_input_shape", None)
    if isinstance(cfg.get("axis"), list) and len(cfg["axis"]) == 1 and class_name == "BatchNormalization":
        cfg["axis"] = cfg["axis"][0]
    if class_name == "DepthwiseConv2D":
        cfg.pop("groups", None)  # tf-keras's Conv base writes groups=1; Keras 3's DepthwiseConv2D rejects it
    if class_name == "MultiHeadAttention":
        shapes = {k: cfg.pop(k) for k in ("query_shape", "value_shape", "key_shape") if k in cfg}
        if shapes.get("query_shape") is not None:
            build = {"shapes_dict": shapes}
    for key in ("layer", "forward_layer", "backward_layer"):  # wrappers
        inner = cfg.get(key)
        if isinstance(inner, dict) and "class_name" in inner:
            inner_cfg, _ = _layer_config(inner["class_name"], inner.get("config", {}))
            cfg[key] = _obj("keras.layers", inner["class_name"], inner_cfg)
    _nested_objects(cfg)
    return cfg, build


def _sequential_input(first: dict) -> list:
    """``[the InputLayer]`` of a Sequential config whose first layer carries the input shape, as Keras 2
    writes it (``batch_input_shape``), else ``[]``. Keras 3's layers take no input shape: its
    Sequential configs begin with their InputLayer, named here as tf-keras names it."""
    cfg = first.get("config")
    shape = cfg.get("batch_input_shape") if isinstance(cfg, dict) else None
    if not isinstance(shape, list):
        return []
    dtype = cfg.get("dtype") if isinstance(cfg.get("dtype"), str) else "float32"
    name = f"{cfg.get('name', first.get('name', 'sequential'))}_input"
    return [_obj("keras.layers", "InputLayer", {"batch_shape": shape, "dtype": dtype, "sparse": False, "name": name,
                                                "optional": False})]  # fmt: skip


def to_keras3(config: dict) -> dict:
    """The Keras 3 ``config.json`` object for a Keras 2 (or already Keras 3) model config."""
    if "module" in config:
        return copy.deepcopy(config)
    return _to_keras3(keras2_config(config))


def _to_keras3(config: dict) -> dict:
    if "module" in config:
        return copy.deepcopy(config)
    class_name = config.get("class_name")
    cfg = copy.deepcopy(config.get("config", {}))
    if class_name not in MODEL_CLASSES:
        layer_cfg, build = _layer_config(class_name, cfg)
        out = _obj("keras.layers", class_name, layer_cfg)
        if build is not None:
            out["build_config"] = build
        return out
    layers = cfg.get("layers", [])
    nested: dict = {}
    functional: set = set()
    # Keras 3 writes its nodes as {"args", "kwargs"} in a legacy .h5 config too, numbered as here already
    if not any(isinstance(node, dict) for entry in layers for node in entry.get("inbound_nodes") or []):
        nested = _nested_numbering(cfg)
        functional = {entry.get("name", entry.get("config", {}).get("name")) for entry in layers
                      if entry.get("class_name") in ("Functional", "Model")}  # fmt: skip
    new_layers = []
    for entry in layers:
        sub = _to_keras3(entry)
        if class_name != "Sequential":
            sub["name"] = entry.get("name", entry.get("config", {}).get("name"))
            sub["inbound_nodes"] = _nodes(entry.get("inbound_nodes", []), nested, entry.get("class_name"))
            sub = keras3_op(entry, nested, sub)  # a TFOpLambda the exporter wrote: Keras 3's keras.ops node
        new_layers.append(sub)
    if class_name == "Sequential" and layers and layers[0].get("class_name") != "InputLayer":
        new_layers[:0] = _sequential_input(layers[0])
    cfg["layers"] = new_layers
    if class_name == "Sequential":
        return {"module": "keras", "class_name": "Sequential", "config": cfg, "registered_name": None}
    for key in ("input_layers", "output_layers"):
        refs = cfg.get(key)
        if isinstance(refs, list):
            # Keras 3 counts a nested Functional's calls from 1 here ("Functional models start with
            # a pre-existing node", Functional.get_config), a nested Sequential's from 0 (in Keras 3
            # Sequential is no Functional); functional_from_config's get_tensor subtracts the 1
            refs = [[r[0], r[1] - nested.get(r[0], 0) + (r[0] in functional), r[2]] if is_ref(r) else r
                    for r in refs]  # fmt: skip
            cfg[key] = refs[0] if len(refs) == 1 else refs
    return {"module": "keras.src.models.functional", "class_name": "Functional", "config": cfg,
            "registered_name": "Functional"}  # fmt: skip


#: tf-keras layer classes that Keras 3 has no class for (its TensorFlow-call layers)
TF_KERAS_ONLY = ("TFOpLambda", "SlicingOpLambda", "ClassMethod", "InstanceMethod", "InstanceProperty",
                 "TensorFlowOpLayer")  # fmt: skip


def keras3_unreadable(config3: dict) -> list:
    """``[(layer name, class name, tf function or None)]`` for each layer of a Keras 3 config
    (:func:`to_keras3`; nested models' too) whose class Keras 3 cannot deserialize: a
    ``TFOpLambda`` with no ``keras.ops`` form (:mod:`.ops_export`), another tf-keras-only layer."""
    out = []
    cfg = config3.get("config", {})
    for entry in cfg.get("layers", []) if isinstance(cfg, dict) else []:
        cls = entry.get("class_name")
        if cls in MODEL_CLASSES:
            out += keras3_unreadable(entry)
        elif cls in TF_KERAS_ONLY:
            c = entry.get("config", {})
            out.append((entry.get("name", c.get("name")), cls, c.get("function")))
    return out


def tf_keras_hard_sigmoids(config: dict) -> list:
    """``[(layer name, argument)]`` for each activation argument (``activation``,
    ``recurrent_activation``, Keras 1's ``inner_activation``) of a Keras 1/2 config's layers,
    nested and wrapped ones included, that is ``hard_sigmoid``: tf-keras's is clip(0.2x + 0.5, 0, 1),
    Keras 3's relu6(x + 3) / 6, and Keras 3 has no name for the former. Empty for a config already
    in the Keras 3 dialect (:func:`to_keras3` keeps those as they are)."""
    if "module" in config:
        return []
    out = []
    for entry in config_layers(config, nested=True):
        cfg = entry.get("config")
        for key, value in cfg.items() if isinstance(cfg, dict) else ():
            if key.endswith("activation") and value == "hard_sigmoid":
                out.append((entry_name(entry), key))
    return out


def _object_names(obj: Any, out: list) -> list:
    """The names of the serialized objects in a config: each layer (nested models' too), each model,
    each object a layer's config holds (a wrapper's layer, a dtype policy)."""
    if isinstance(obj, dict):
        if "class_name" in obj:
            for holder in (obj, obj.get("config")):
                if isinstance(holder, dict) and isinstance(holder.get("name"), str):
                    out.append(holder["name"])
        for value in obj.values():
            _object_names(value, out)
    elif isinstance(obj, list):
        for value in obj:
            _object_names(value, out)
    return out


def legal_names(config3: dict) -> tuple:
    """(``config3`` with every name Keras 3 forbids made legal, ``{old name: new name}``).

    Keras 3 refuses '/' in a layer's name (``Operation.__init__``), which tf-keras allows and
    its applications use (DenseNet121's ``conv1/conv``, MobileNetV3's ``Conv/BatchNorm``). Each
    such name becomes its '/' -> '_' spelling, numbered ``_1``, ``_2``, … when that is taken by any
    other name of the model (nested models' included), and is renamed everywhere it appears: the
    layer's ``name`` and ``config.name``, the ``keras_history`` of the tensors its calls give,
    ``input_layers``/``output_layers``, a nested model's own config, and the objects inside a layer's
    config (a wrapper's layer). One name gets one new name throughout. ``config3``: Keras 3 dialect
    (:func:`to_keras3`); it is not modified."""
    names = _object_names(config3, [])
    used = set(names)
    renamed: dict = {}
    for old in dict.fromkeys(n for n in names if "/" in n):  # in config order: the same config, the same names
        base = old.replace("/", "_")
        new, i = base, 0
        while new in used:
            i += 1
            new = f"{base}_{i}"
        used.add(new)
        renamed[old] = new
    return _renamed(config3, renamed, True), renamed


def _renamed(obj: Any, renamed: dict, named: bool = False) -> Any:
    """A copy of ``obj`` with the names of its objects (``named``: ``obj`` is one, or the config of
    one) and each reference to a layer (``keras_history``, ``[name, node, tensor]`` in
    ``input_layers``/``output_layers``) renamed."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key == "name" and named and isinstance(value, str):
                out[key] = renamed.get(value, value)
            elif key == "keras_history" and isinstance(value, list) and value and isinstance(value[0], str):
                out[key] = [renamed.get(value[0], value[0]), *copy.deepcopy(value[1:])]
            elif key in ("input_layers", "output_layers"):
                out[key] = _renamed_refs(value, renamed)
            else:
                inner = (key == "config" and "class_name" in obj) or (isinstance(value, dict) and "class_name" in value)
                out[key] = _renamed(value, renamed, inner)
        return out
    if isinstance(obj, list):
        return [_renamed(v, renamed, isinstance(v, dict) and "class_name" in v) for v in obj]
    return copy.deepcopy(obj)


def _renamed_refs(refs: Any, renamed: dict) -> Any:
    if is_ref(refs):
        return [renamed.get(refs[0], refs[0]), *copy.deepcopy(refs[1:])]
    if isinstance(refs, list):
        return [_renamed_refs(r, renamed) for r in refs]
    if isinstance(refs, dict):
        return {k: _renamed_refs(v, renamed) for k, v in refs.items()}
    return copy.deepcopy(refs)


def layer_entries(config: dict, prefix: str = "") -> list:
    """``[(store path, layer name, class name, wrapped class or None)]`` for every non-model layer of
    a Keras 3 config, as Keras 3's saving walk names them (nested models recursed into)."""
    out = []
    cfg = config.get("config", {})
    layers = cfg.get("layers", []) if isinstance(cfg, dict) else []
    if config.get("class_name") in ("Functional", "Model") and layers:
        # Keras 3 numbers the paths in the order of the rebuilt model.layers, its own depth sort of
        # the graph (.order), not the config's: the same order for every config Keras wrote
        with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError):
            by_name = {entry.get("name", entry.get("config", {}).get("name")): entry for entry in layers}
            layers = [by_name[name] for name in layer_order(config, "keras3")]
    used: dict = {}
    for entry in layers:
        cls = entry.get("class_name")
        if config.get("class_name") == "Sequential" and cls == "InputLayer":
            continue  # Sequential.layers leaves the InputLayer out
        if str(entry.get("module", "")).startswith("keras.src.ops"):
            continue  # a keras.ops node is an operation, not a layer: not in model.layers, no path
        base = keras_snake(str(cls))
        n = used.get(base, 0)
        used[base] = n + 1
        path = f"{prefix}layers/{base}" + (f"_{n}" if n else "")
        name = entry.get("config", {}).get("name", entry.get("name"))
        if cls in MODEL_CLASSES:
            out += layer_entries(entry, f"{path}/")
            continue
        inner: Optional[str] = None
        wrapped = entry.get("config", {}).get("layer")
        if isinstance(wrapped, dict):
            inner = wrapped.get("class_name")
        out.append((path, name, cls, inner))
    return out
