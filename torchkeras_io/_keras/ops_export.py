"""``TFOpLambda`` layers of an exported config -> the ``keras.ops`` nodes Keras 3 writes itself.

The export config is in the tf-keras dialect, where an operation with no layer is a
``TFOpLambda`` naming a ``tf.*`` function. Keras 3 cannot rebuild those; it records its own
operations (``keras.ops.matmul``, ...) as nodes of class ``Matmul`` in module
``keras.src.ops.numpy``, with the operands as node arguments and the static arguments in the
config, and rebuilds them in safe mode. :data:`TABLE` maps every function the exporter writes
to that form; docs/export_ops.md lists them.
"""

from __future__ import annotations

from typing import Any

_NUMPY = "keras.src.ops.numpy"
_NN = "keras.src.ops.nn"
_CORE = "keras.src.ops.core"


def _array(value: Any, dtype: str) -> dict:
    return {"class_name": "__numpy__", "config": {"value": value, "dtype": dtype}}


def _operand(value: Any, tensor) -> Any:
    """A tensor reference, a nested list of numbers (a float32 ``__numpy__``), or a number."""
    converted = tensor(value)
    if converted is value and isinstance(value, list):
        return _array(value, "float32")
    return converted


# function -> fn(x, kwargs, tensor) -> (module, class_name, config, args[, node kwargs])
TABLE: dict = {
    "linalg.matmul": lambda x, kw, t: (_NUMPY, "Matmul", {}, [x, t(kw["b"])]),
    "roll": lambda x, kw, t: (_NUMPY, "Roll", {"shift": kw["shift"], "axis": kw["axis"]}, [x]),
    "gather": lambda x, kw, t: (_NUMPY, "Take", {"axis": kw["axis"]}, [x, _array(kw["indices"], "int32")]),
    "math.add": lambda x, kw, t: (_NUMPY, "Add", {}, [x, _operand(kw["y"], t)]),
    "math.equal": lambda x, kw, t: (_NUMPY, "Equal", {}, [x, t(kw["y"])]),
    "math.not_equal": lambda x, kw, t: (_NUMPY, "NotEqual", {}, [x, t(kw["y"])]),
    "math.less": lambda x, kw, t: (_NUMPY, "Less", {}, [x, t(kw["y"])]),
    "math.less_equal": lambda x, kw, t: (_NUMPY, "LessEqual", {}, [x, t(kw["y"])]),
    "math.greater": lambda x, kw, t: (_NUMPY, "Greater", {}, [x, t(kw["y"])]),
    "math.greater_equal": lambda x, kw, t: (_NUMPY, "GreaterEqual", {}, [x, t(kw["y"])]),
    "pad": lambda x, kw, t: (
        _NUMPY,
        "Pad",
        {"pad_width": kw["paddings"], "mode": str(kw["mode"]).lower()},
        [x],
        {"constant_values": kw["constant_values"]} if kw["mode"] == "CONSTANT" else {},
    ),
    "cast": lambda x, kw, t: (_CORE, "Cast", {"dtype": kw["dtype"]}, [x]),
    "nn.gelu": lambda x, kw, t: (_NN, "Gelu", {"approximate": bool(kw.get("approximate", False))}, [x]),
}


def keras3_op(entry: dict, nested: set, converted: dict) -> dict:
    """The Keras 3 form of layer ``entry`` (Keras 2 dialect): a ``keras.ops`` node for a
    ``TFOpLambda`` the exporter wrote, else ``converted`` (what :func:`.keras3.to_keras3` made)."""
    if entry.get("class_name") != "TFOpLambda":
        return converted
    from .keras3 import _is_ref, _tensor

    function = entry["config"].get("function")
    if function not in TABLE:  # not written by the exporter: left as it was
        return converted

    def tensor(v: Any) -> Any:
        return _tensor(v, nested) if _is_ref(v) else v

    nodes = []
    for node in entry.get("inbound_nodes", []):
        # the exporter's ops take one tensor positionally, the others by keyword; tf-keras writes
        # the node as that bare entry [layer, node, tensor, kwargs]
        (ref,) = [node] if isinstance(node[0], str) else node
        if ref[0] == "_CONSTANT_VALUE":  # a constant first argument: not a form the exporter writes
            return converted
        kwargs = {k: v for k, v in (ref[3] if len(ref) > 3 else {}).items() if k != "name"}
        module, class_name, config, args, *call_kwargs = TABLE[function](_tensor(ref[:3], nested), kwargs, tensor)
        nodes.append((module, class_name, config, {"args": args, "kwargs": call_kwargs[0] if call_kwargs else {}}))
    module, class_name, config, _ = nodes[0]
    name = entry.get("name", entry["config"].get("name"))
    return {"module": module, "class_name": class_name, "config": {"name": name, **config},
            "registered_name": class_name, "name": name, "inbound_nodes": [n[3] for n in nodes]}  # fmt: skip
