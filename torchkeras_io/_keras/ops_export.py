"""``TFOpLambda`` layers of an exported config -> the ``keras.ops`` nodes Keras 3 writes itself.

The export config is in the tf-keras dialect, where an operation with no layer is a
``TFOpLambda`` naming a ``tf.*`` function (the exporter's, or tf-keras's own in a model loaded
from a tf-keras file: MobileNetV3's ``x + 3.0`` is ``tf.__operators__.add``). Keras 3 cannot
rebuild those; it records its own operations (``keras.ops.matmul``, ...) as nodes of class
``Matmul`` in module ``keras.src.ops.numpy``, with the operands as node arguments (a tensor, a
number, a ``__numpy__`` array) and the static arguments in the config, and rebuilds them in safe
mode. :data:`TABLE` maps every function the loader computes to that form where Keras 3 has one;
a ``TFOpLambda`` left over has none, and :func:`.keras3.keras3_unreadable` refuses to write it.
docs/export_ops.md lists them.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from torchkeras_io._keras.order import is_ref

_NUMPY = "keras.src.ops.numpy"
_NN = "keras.src.ops.nn"
_MATH = "keras.src.ops.math"
_CORE = "keras.src.ops.core"


def _array(value: Any, dtype: str) -> dict:
    return {"class_name": "__numpy__", "config": {"value": value, "dtype": dtype}}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _operand(value: Any, tensor) -> Any:
    """A tensor reference, a nested list of numbers (a float32 ``__numpy__``), a number, or None
    (no Keras 3 form: a serialized object, a string)."""
    converted = tensor(value)
    if converted is value and isinstance(value, list):
        return _array(value, "float32")
    if converted is value and not _number(value):
        return None
    return converted


def _static(value: Any) -> bool:
    """A constant argument (an int, a list of ints, None), not a tensor of the graph."""
    if value is None or _number(value) or isinstance(value, bool):
        return True
    return isinstance(value, list) and all(_number(v) for v in value)


def _unary(module: str, cls: str) -> Callable:
    return lambda x, kw, t: (module, cls, {}, [x])


def _binary(cls: str, second: str = "y") -> Callable:
    def form(x, kw, t):
        y = _operand(kw.get(second), t)
        return None if y is None else (_NUMPY, cls, {}, [x, y])

    return form


def _reduce(cls: str) -> Callable:
    def form(x, kw, t):
        if not _static(kw.get("axis")):
            return None
        return _NUMPY, cls, {"axis": kw.get("axis"), "keepdims": bool(kw.get("keepdims"))}, [x]

    return form


def _axis(cls: str, module: str = _NUMPY, default: Any = -1, key: str = "axis") -> Callable:
    """An op with one ``axis`` argument (``default`` where the call leaves it out; None: required)."""

    def form(x, kw, t):
        axis = kw.get("axis", default)
        axis = default if axis is None else axis
        return (module, cls, {key: axis}, [x]) if axis is not None and _static(axis) else None

    return form


def _dtype_name(dtype: Any) -> Any:
    if isinstance(dtype, dict):  # a tf.DType serialised by tf-keras
        return dtype.get("config", {}).get("name", dtype.get("class_name"))
    return dtype


def _clip(x, kw, t):
    lo, hi = kw.get("clip_value_min"), kw.get("clip_value_max")
    return (_NUMPY, "Clip", {"x_min": lo, "x_max": hi}, [x]) if _number(lo) and _number(hi) else None


def _matmul(x, kw, t):
    flags = ("transpose_a", "transpose_b", "adjoint_a", "adjoint_b", "a_is_sparse", "b_is_sparse")
    b = _operand(kw.get("b"), t)
    return None if any(kw.get(f) for f in flags) or b is None else (_NUMPY, "Matmul", {}, [x, b])


def _bias_add(x, kw, t):
    bias = _operand(kw.get("bias"), t)
    if bias is None or str(kw.get("data_format") or "NHWC").startswith("NC"):
        return None  # channels-first bias_add: no single keras.ops call
    return _NUMPY, "Add", {}, [x, bias]


def _squeeze(x, kw, t):
    axis = kw.get("axis", kw.get("squeeze_dims"))
    return (_NUMPY, "Squeeze", {"axis": axis}, [x]) if _static(axis) else None


def _transpose(x, kw, t):
    perm = kw.get("perm")
    return None if kw.get("conjugate") or not _static(perm) else (_NUMPY, "Transpose", {"axes": perm}, [x])


def _reshape(x, kw, t):
    shape = kw.get("shape")
    return (_NUMPY, "Reshape", {"newshape": shape}, [x]) if _static(shape) and shape is not None else None


def _pad(x, kw, t):
    if not _number(kw.get("constant_values", 0)) or not isinstance(kw.get("paddings"), list):
        return None
    mode = str(kw.get("mode", "CONSTANT")).lower()
    return _NUMPY, "Pad", {"pad_width": kw["paddings"], "mode": mode}, [x], (
        {"constant_values": kw.get("constant_values", 0)} if mode == "constant" else {})  # fmt: skip


def _gather(x, kw, t):
    if kw.get("batch_dims") or not _static(kw.get("indices")) or kw.get("indices") is None:
        return None
    return _NUMPY, "Take", {"axis": kw.get("axis", 0)}, [x, _array(kw["indices"], "int32")]


# tf function -> fn(x, kwargs, tensor) -> (module, class_name, config, args[, node kwargs]), or None
# where these arguments have no Keras 3 form; x is the first argument (a list for concat / stack)
TABLE: dict = {
    "linalg.matmul": _matmul,
    "matmul": _matmul,
    "roll": lambda x, kw, t: (_NUMPY, "Roll", {"shift": kw["shift"], "axis": kw["axis"]}, [x]),
    "gather": _gather,
    "compat.v1.gather": _gather,
    "pad": _pad,
    "compat.v1.pad": _pad,
    "cast": lambda x, kw, t: (_CORE, "Cast", {"dtype": _dtype_name(kw["dtype"])}, [x]),
    "dtypes.cast": lambda x, kw, t: (_CORE, "Cast", {"dtype": _dtype_name(kw["dtype"])}, [x]),
    "nn.gelu": lambda x, kw, t: (_NN, "Gelu", {"approximate": bool(kw.get("approximate", False))}, [x]),
    "nn.leaky_relu": lambda x, kw, t: (_NN, "LeakyRelu", {"negative_slope": float(kw.get("alpha", 0.2))}, [x]),
    "nn.elu": lambda x, kw, t: (_NN, "Elu", {"alpha": 1.0}, [x]),
    "nn.softmax": _axis("Softmax", _NN),
    "math.softmax": _axis("Softmax", _NN),
    "nn.log_softmax": _axis("LogSoftmax", _NN),
    "reshape": _reshape,
    "transpose": _transpose,
    "compat.v1.transpose": _transpose,
    "expand_dims": _axis("ExpandDims", default=None),
    "compat.v1.expand_dims": _axis("ExpandDims", default=None),
    "squeeze": _squeeze,
    "compat.v1.squeeze": _squeeze,
    "concat": _axis("Concatenate", default=None),
    "stack": _axis("Stack", default=0),
    "clip_by_value": _clip,
    "nn.bias_add": _bias_add,
}
for _f, _cls in {"__operators__.add": "Add", "math.add": "Add", "math.add_v2": "Add", "math.subtract": "Subtract",
                 "math.multiply": "Multiply", "math.divide": "Divide", "math.truediv": "Divide",
                 "math.floordiv": "FloorDivide",
                 "compat.v1.floor_div": "FloorDivide", "math.maximum": "Maximum", "math.minimum": "Minimum",
                 "math.pow": "Power", "math.equal": "Equal", "math.not_equal": "NotEqual", "math.less": "Less",
                 "math.less_equal": "LessEqual", "math.greater": "Greater", "math.greater_equal": "GreaterEqual",
                 "math.logical_and": "LogicalAnd", "math.logical_or": "LogicalOr"}.items():  # fmt: skip
    TABLE[_f] = _binary(_cls)
for _f, (_module, _cls) in {
    "math.exp": (_NUMPY, "Exp"), "math.log": (_NUMPY, "Log"), "math.log1p": (_NUMPY, "Log1p"),
    "math.expm1": (_NUMPY, "Expm1"), "math.sqrt": (_NUMPY, "Sqrt"), "math.rsqrt": (_MATH, "Rsqrt"),
    "math.abs": (_NUMPY, "Absolute"), "math.square": (_NUMPY, "Square"), "math.negative": (_NUMPY, "Negative"),
    "__operators__.neg": (_NUMPY, "Negative"), "math.reciprocal": (_NUMPY, "Reciprocal"),
    "math.sign": (_NUMPY, "Sign"), "math.floor": (_NUMPY, "Floor"), "math.ceil": (_NUMPY, "Ceil"),
    "math.round": (_NUMPY, "Round"), "math.sin": (_NUMPY, "Sin"), "math.cos": (_NUMPY, "Cos"),
    "math.tanh": (_NUMPY, "Tanh"), "nn.tanh": (_NUMPY, "Tanh"), "math.erf": (_MATH, "Erf"),
    "math.sigmoid": (_NN, "Sigmoid"), "nn.sigmoid": (_NN, "Sigmoid"), "math.softplus": (_NN, "Softplus"),
    "nn.softplus": (_NN, "Softplus"), "math.softsign": (_NN, "Softsign"), "nn.softsign": (_NN, "Softsign"),
    "nn.relu": (_NN, "Relu"), "nn.relu6": (_NN, "Relu6"), "nn.selu": (_NN, "Selu"), "nn.silu": (_NN, "Silu"),
    "nn.swish": (_NN, "Silu"), "math.logical_not": (_NUMPY, "LogicalNot"), "math.is_nan": (_NUMPY, "Isnan"),
}.items():  # fmt: skip
    TABLE[_f] = _unary(_module, _cls)
for _f, _cls in {"math.reduce_mean": "Mean", "math.reduce_sum": "Sum", "math.reduce_max": "Max",
                 "math.reduce_min": "Min", "math.reduce_prod": "Prod", "math.reduce_any": "Any",
                 "math.reduce_all": "All"}.items():  # fmt: skip
    TABLE[_f] = _reduce(_cls)


def keras_tensor(ref: list, nested: dict) -> dict:
    """A call argument: Keras 3 counts a nested model's calls from 0 there, Functional or not
    (``serialize_node`` in keras/src/models/functional.py drops the nodes outside the model,
    the Functional's own ``Input`` node among them)."""
    node = ref[1] - nested.get(ref[0], 0)
    # Keras 3 replaces the placeholder by the inbound layer's output; it only needs a valid shape
    return {"class_name": "__keras_tensor__",
            "config": {"shape": [None], "dtype": "float32", "keras_history": [ref[0], node, ref[2]]}}  # fmt: skip


def keras3_op(entry: dict, nested: dict, converted: dict) -> dict:
    """The Keras 3 form of layer ``entry`` (Keras 2 dialect): a ``keras.ops`` node for a
    ``TFOpLambda`` whose function and arguments have one (:data:`TABLE`), else ``converted``
    (what :func:`.keras3.to_keras3` made: still a ``TFOpLambda``, which the writer refuses)."""
    if entry.get("class_name") != "TFOpLambda":
        return converted
    function = entry["config"].get("function")
    function = function[3:] if isinstance(function, str) and function.startswith("tf.") else function
    if function not in TABLE:
        return converted

    def tensor(v: Any) -> Any:
        return keras_tensor(v, nested) if is_ref(v) else v

    nodes = []
    for node in entry.get("inbound_nodes", []):
        if not isinstance(node, list) or not node:
            return converted
        # tf-keras writes a call on one tensor as the bare entry [layer, node, tensor, kwargs], on a
        # list of tensors (tf.concat) as a list of such entries, each with the call's kwargs
        listed = not isinstance(node[0], str)
        refs = node if listed else [node]
        if not all(is_ref(r) for r in refs) or any(r[0] == "_CONSTANT_VALUE" for r in refs):
            return converted  # a constant first argument: no form here
        kwargs = {k: v for k, v in (refs[0][3] if len(refs[0]) > 3 else {}).items() if k != "name"}
        tensors = [keras_tensor(r[:3], nested) for r in refs]
        form: Optional[tuple] = TABLE[function](tensors if listed else tensors[0], kwargs, tensor)
        if form is None:
            return converted
        module, class_name, config, args, *call_kwargs = form
        nodes.append((module, class_name, config, {"args": args, "kwargs": call_kwargs[0] if call_kwargs else {}}))
    if not nodes or len({(n[0], n[1], repr(n[2])) for n in nodes}) != 1:
        return converted  # called with different static arguments: one op node cannot hold them
    module, class_name, config, _ = nodes[0]
    name = entry.get("name", entry["config"].get("name"))
    return {"module": module, "class_name": class_name, "config": {"name": name, **config},
            "registered_name": class_name, "name": name, "inbound_nodes": [n[3] for n in nodes]}  # fmt: skip
