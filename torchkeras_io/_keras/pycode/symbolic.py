"""A symbolic stack evaluator over a Lambda's bytecode: instructions in, a small expression tree out.

Nothing from the file is executed. The instructions are walked in order (straight-line code only:
no jumps, loops, nested functions, imports or stores outside the function's own locals), with a
stack of *symbolic* values:

- Python constants from the code object (numbers, strings, ``None``, ``Ellipsis``, tuples, slices);
- :class:`Mod` — a dotted name rooted at one of the globals ``K``, ``keras``, ``backend``, ``tf``,
  ``tensorflow``, ``np``, ``numpy``, ``math``, ``ops`` (``K.tf.image`` is such a name);
- :class:`Node` — an expression over the layer's input: ``Node("input")``, operators, subscripts,
  tuples, and calls of the functions in :data:`FUNCTIONS`, the one table of what is supported.

A call resolves its dotted name through :func:`resolve` (aliases: ``keras.backend.``,
``backend.``, ``tf.keras.backend.`` are ``K.``; ``tensorflow.`` is ``tf.``; ``K.tf.`` is
``tf.``; ``tf.math.X`` is ``tf.X``; ``keras.ops.`` is ``ops.``) and binds its arguments against
the table's signature, so every argument the tree holds is named. Anything else — another
function, an attribute of a tensor other than ``shape``, an unknown instruction — ends in
:class:`PyCodeError` naming it.

Arithmetic on two Python numbers is folded here, bounded (no huge powers or shifts).
"""

from __future__ import annotations

import math
from typing import Any, Optional

from torchkeras_io._keras.pycode.codeobj import CO_VARARGS, CO_VARKEYWORDS, CodeObject, instructions
from torchkeras_io._keras.pycode.opcodes import CMP_OPS, NB_OPS
from torchkeras_io._keras.pycode.unmarshal import PyCodeError

MAX_STACK = 512
MAX_NODES = 5000
MAX_DEPTH = 200
KERAS_EPSILON = 1e-7  # K.epsilon(): Keras's default fuzz factor (a file cannot say it was changed)


class Node:
    """One operation of the expression tree. ``args`` hold Nodes or Python constants."""

    __slots__ = ("op", "args", "kwargs", "depth")

    def __init__(self, op: str, args: tuple = (), kwargs: Optional[dict] = None):
        self.op, self.args, self.kwargs = op, tuple(args), dict(kwargs or {})
        children = [a for a in _leaves(self.args) if isinstance(a, Node)]
        children += [a for a in _leaves(tuple(self.kwargs.values())) if isinstance(a, Node)]
        self.depth = 1 + max((c.depth for c in children), default=0)
        if self.depth > MAX_DEPTH:
            raise PyCodeError(f"expression nested deeper than {MAX_DEPTH}")

    def __repr__(self) -> str:
        inner = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.op}({', '.join(inner)})"


def _leaves(values: tuple):
    for v in values:
        if isinstance(v, (tuple, list)):
            yield from _leaves(tuple(v))
        elif isinstance(v, slice):
            yield from _leaves((v.start, v.stop, v.step))
        else:
            yield v


class Mod:
    """A dotted global name (``K``, ``K.tf.image``, ``np``): only attribute access and calls."""

    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path

    def __repr__(self) -> str:
        return self.path


class _Null:
    def __repr__(self) -> str:
        return "NULL"


NULL = _Null()
GLOBAL_ROOTS = {"K", "keras", "backend", "tf", "tensorflow", "np", "numpy", "math", "ops", "abs", "float",
                "int", "min", "max", "len"}  # fmt: skip

# ----------------------------------------------------------------------------- the function table
# name -> (operation, signature). A signature lists parameter names; ("name", default) has a default.
_UNARY = ("x",)
_REDUCE = ("x", ("axis", None), ("keepdims", False))
_TF_REDUCE = ("input_tensor", ("axis", None), ("keepdims", False), ("name", None), ("reduction_indices", None),
              ("keep_dims", None))  # fmt: skip
_RANDOM_NORMAL = ("shape", ("mean", 0.0), ("stddev", 1.0), ("dtype", None), ("seed", None), ("name", None))
_RANDOM_UNIFORM = ("shape", ("minval", 0.0), ("maxval", 1.0), ("dtype", None), ("seed", None), ("name", None))

FUNCTIONS: dict = {}


def _def(names: str, op: str, signature: tuple) -> None:
    for name in names.split():
        FUNCTIONS[name] = (op, signature)


# Keras 1/2 backend (K., keras.backend., tf.keras.backend.): K.sqrt clips negatives to 0 first, as Keras does
_def("K.sqrt", "sqrt_clip", _UNARY)
_def("K.epsilon", "epsilon", ())
for _n in ("square", "exp", "log", "abs", "sign", "round", "sigmoid", "tanh", "softplus", "softsign", "cos", "sin",
           "hard_sigmoid"):  # fmt: skip
    _def(f"K.{_n}", _n, _UNARY)
_def("K.relu", "relu", ("x", ("alpha", 0.0), ("max_value", None), ("threshold", 0.0)))
_def("K.elu", "elu", ("x", ("alpha", 1.0)))
_def("K.softmax", "softmax", ("x", ("axis", -1)))
_def("K.maximum", "maximum", ("x", "y"))
_def("K.minimum", "minimum", ("x", "y"))
_def("K.pow", "pow", ("x", "a"))
_def("K.clip", "clip_keras", ("x", "min_value", "max_value"))
for _n in ("sum", "mean", "max", "min", "prod", "std", "var", "any", "all"):
    _def(f"K.{_n}", _n, _REDUCE)
_def("K.argmax K.argmin", "argmax", ("x", ("axis", -1)))
FUNCTIONS["K.argmin"] = ("argmin", ("x", ("axis", -1)))
_def("K.l2_normalize", "l2_normalize", ("x", ("axis", None), ("epsilon", 1e-12)))
_def("K.concatenate", "concatenate", ("tensors", ("axis", -1)))
_def("K.stack", "stack", ("x", ("axis", 0)))
_def("K.expand_dims", "expand_dims", ("x", ("axis", -1)))
_def("K.squeeze", "squeeze", ("x", "axis"))
_def("K.reshape", "reshape", ("x", "shape"))
_def("K.permute_dimensions", "permute", ("x", "pattern"))
_def("K.transpose", "transpose", ("x",))
_def("K.flatten", "flatten", ("x",))
_def("K.batch_flatten", "batch_flatten", ("x",))
_def("K.cast", "cast", ("x", "dtype"))
_def("K.shape", "shape", ("x",))
_def("K.int_shape", "int_shape", ("x",))
_def("K.ones_like", "ones_like", ("x", ("dtype", None), ("name", None)))
_def("K.zeros_like", "zeros_like", ("x", ("dtype", None), ("name", None)))
_def("K.reverse", "reverse", ("x", "axes"))
_def("K.dot", "dot", ("x", "y"))
_def("K.tile", "tile", ("x", "n"))
_def("K.repeat_elements", "repeat_elements", ("x", "rep", "axis"))
_def("K.one_hot", "one_hot", ("indices", "num_classes"))
_def("K.cumsum", "cumsum", ("x", ("axis", 0)))
_def("K.logsumexp", "logsumexp", _REDUCE)
for _n, _cmp in (("equal", "=="), ("not_equal", "!="), ("greater", ">"), ("greater_equal", ">="), ("less", "<"),
                 ("less_equal", "<=")):  # fmt: skip
    _def(f"K.{_n} tf.{_n}", f"compare{_cmp}", ("x", "y"))
_def("K.random_normal", "random_normal", _RANDOM_NORMAL)
_def("K.random_uniform", "random_uniform", _RANDOM_UNIFORM)
_def("K.resize_images", "resize_factor",
     ("x", "height_factor", "width_factor", ("data_format", None), ("interpolation", "nearest")))  # fmt: skip
# TensorFlow (tf., tf.math., K.tf.): tf.sqrt does not clip
for _n in ("sqrt", "square", "exp", "log", "abs", "sign", "round", "sigmoid", "tanh", "cos", "sin", "floor", "ceil",
           "rsqrt", "softplus", "log"):  # fmt: skip
    _def(f"tf.{_n}", _n, _UNARY)
_def("tf.nn.softplus", "softplus", _UNARY)
_def("tf.nn.relu", "relu", ("features", ("name", None)))
_def("tf.nn.sigmoid", "sigmoid", _UNARY)
_def("tf.nn.tanh", "tanh", _UNARY)
_def("tf.nn.softmax", "softmax", ("logits", ("axis", None), ("name", None)))
_def("tf.maximum", "maximum", ("x", "y", ("name", None)))
_def("tf.minimum", "minimum", ("x", "y", ("name", None)))
_def("tf.pow", "pow", ("x", "y", ("name", None)))
_def("tf.clip_by_value", "clip", ("t", "clip_value_min", "clip_value_max", ("name", None)))
for _n in ("sum", "mean", "max", "min", "prod", "any", "all"):
    _def(f"tf.reduce_{_n}", _n, _TF_REDUCE)
_def("tf.nn.l2_normalize", "l2_normalize", ("x", ("axis", None), ("epsilon", 1e-12), ("name", None), ("dim", None)))
_def("tf.concat", "concatenate", ("values", "axis", ("name", None)))
_def("tf.stack", "stack", ("values", ("axis", 0), ("name", None)))
_def("tf.expand_dims", "expand_dims", ("input", "axis", ("name", None), ("dim", None)))
_def("tf.squeeze", "squeeze", ("input", ("axis", None), ("name", None), ("squeeze_dims", None)))
_def("tf.reshape", "reshape", ("tensor", "shape", ("name", None)))
_def("tf.transpose", "transpose", ("a", ("perm", None), ("name", None), ("conjugate", False)))
_def("tf.cast", "cast", ("x", "dtype", ("name", None)))
_def("tf.reverse", "reverse", ("tensor", "axis", ("name", None)))
_def("tf.tile", "tile", ("input", "multiples", ("name", None)))
_def("tf.one_hot", "one_hot", ("indices", "depth", ("on_value", None), ("off_value", None), ("axis", None),
                               ("dtype", None), ("name", None)))  # fmt: skip
_def("tf.cumsum", "cumsum", ("x", ("axis", 0), ("exclusive", False), ("reverse", False), ("name", None)))
_def("tf.matmul", "matmul", ("a", "b", ("transpose_a", False), ("transpose_b", False), ("name", None)))
_def("tf.reduce_logsumexp", "logsumexp", _TF_REDUCE)
_def("tf.shape", "shape", ("input", ("name", None), ("out_type", None)))
_def("tf.ones_like", "ones_like", ("input", ("dtype", None), ("name", None)))
_def("tf.zeros_like", "zeros_like", ("input", ("dtype", None), ("name", None)))
_def("tf.random.normal tf.random_normal", "random_normal", _RANDOM_NORMAL)
_def("tf.random.uniform tf.random_uniform", "random_uniform", _RANDOM_UNIFORM)
_IMAGE_V1 = ("images", "size", ("method", 0), ("align_corners", False), ("preserve_aspect_ratio", False),
             ("name", None))  # fmt: skip
# TF1's resize_images (and tf.compat.v1's): align_corners=False without half-pixel centres
_def("tf.image.resize_images tf.compat.v1.image.resize_images tf.compat.v1.image.resize", "resize_v1", _IMAGE_V1)
_def("tf.image.resize_bilinear tf.compat.v1.image.resize_bilinear", "resize_v1_bilinear",
     ("images", "size", ("align_corners", False), ("name", None), ("half_pixel_centers", False)))  # fmt: skip
_def("tf.image.resize_nearest_neighbor tf.compat.v1.image.resize_nearest_neighbor", "resize_v1_nearest",
     ("images", "size", ("align_corners", False), ("name", None), ("half_pixel_centers", False)))  # fmt: skip
# TF2's tf.image.resize (half-pixel centres)
_def("tf.image.resize", "resize_v2",
     ("images", "size", ("method", "bilinear"), ("preserve_aspect_ratio", False), ("antialias", False),
      ("name", None)))  # fmt: skip
# Keras 3 (keras.ops., ops., keras.random.)
_def("ops.sqrt", "sqrt", _UNARY)
for _n in ("square", "exp", "log", "abs", "sign", "round", "sigmoid", "tanh", "cos", "sin", "floor", "ceil", "relu",
           "softplus"):  # fmt: skip
    _def(f"ops.{_n}", _n, _UNARY)
for _n in ("sum", "mean", "max", "min", "prod", "any", "all"):
    _def(f"ops.{_n}", _n, _REDUCE)
_def("ops.maximum", "maximum", ("x1", "x2"))
_def("ops.minimum", "minimum", ("x1", "x2"))
_def("ops.power", "pow", ("x1", "x2"))
_def("ops.clip", "clip", ("x", "x_min", "x_max"))
_def("ops.concatenate", "concatenate", ("xs", ("axis", 0)))
_def("ops.stack", "stack", ("x", ("axis", 0)))
_def("ops.expand_dims", "expand_dims", ("x", "axis"))
_def("ops.squeeze", "squeeze", ("x", ("axis", None)))
_def("ops.reshape", "reshape", ("x", "newshape"))
_def("ops.transpose", "transpose", ("x", ("axes", None)))
_def("ops.cast", "cast", ("x", "dtype"))
_def("ops.shape", "shape", ("x",))
_def("ops.softmax", "softmax", ("x", ("axis", -1)))
_def("ops.image.resize", "resize_v2",
     ("images", "size", ("interpolation", "bilinear"), ("antialias", False), ("crop_to_aspect_ratio", False),
      ("pad_to_aspect_ratio", False), ("fill_mode", "constant"), ("fill_value", 0.0), ("data_format", None)))  # fmt: skip
_def("random.normal", "random_normal", ("shape", ("mean", 0.0), ("stddev", 1.0), ("dtype", None), ("seed", None)))
_def("random.uniform", "random_uniform", ("shape", ("minval", 0.0), ("maxval", 1.0), ("dtype", None), ("seed", None)))
# Python numbers only (folded here): math., np. and a few builtins
for _n in ("sqrt", "exp", "log", "floor", "ceil", "cos", "sin", "tan", "log2", "log10"):
    _def(f"math.{_n} np.{_n}", f"py.{_n}", _UNARY)
_def("abs", "py.abs", _UNARY)
_def("float", "py.float", _UNARY)
_def("int", "py.int", _UNARY)
_def("len", "len", _UNARY)

#: constants reached by attribute access (np.float32 and friends stand for their dtype names)
CONSTANTS = {"np.pi": math.pi, "math.pi": math.pi, "np.e": math.e, "math.e": math.e, "np.inf": math.inf,
             "math.inf": math.inf, "math.tau": math.tau, "np.newaxis": None, "tf.newaxis": None}  # fmt: skip
for _d in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"):
    CONSTANTS[f"np.{_d}"] = _d
    CONSTANTS[f"tf.{_d}"] = _d

_ALIASES = (("tf.keras.backend.", "K."), ("keras.backend.", "K."), ("backend.", "K."), ("K.tf.", "tf."),
            ("tensorflow.", "tf."), ("numpy.", "np."), ("keras.ops.", "ops."), ("keras.random.", "random."),
            ("tf.math.", "tf."), ("tf.keras.ops.", "ops."))  # fmt: skip


def resolve(path: str) -> str:
    """The table name of a dotted global name (aliases folded)."""
    changed = True
    while changed:
        changed = False
        for prefix, to in _ALIASES:
            if path.startswith(prefix):
                path, changed = to + path[len(prefix) :], True
    return path


_PREFIXES = {
    name.rsplit(".", i)[0] for name in list(FUNCTIONS) + list(CONSTANTS) for i in range(1, name.count(".") + 1)
}


_PREFIXES |= {"keras", "tf.keras", "tensorflow", "numpy"}


def _known_prefix(path: str) -> bool:
    """Whether ``path`` is a module (or a function) that some table name lies under."""
    norm = resolve(path + ".")[:-1]
    return norm in _PREFIXES or path in _PREFIXES or norm in FUNCTIONS


# ----------------------------------------------------------------------------- Python-number folding
_NUM = (int, float, bool)


def _is_num(v) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, complex)


def fold_binop(op: str, a, b):
    """``a op b`` for two Python numbers, refusing results that would be huge."""
    if not (_is_num(a) and _is_num(b)) and op not in ("==", "!="):
        raise PyCodeError(f"operator '{op}' on {_describe(a)} and {_describe(b)} is not supported")
    try:
        if op in ("**", "<<") and isinstance(a, int) and isinstance(b, int):
            bits = max(abs(a).bit_length(), 1) * b if op == "**" else abs(a).bit_length() + b
            if b < 0 and op == "<<":
                raise PyCodeError("negative shift count")
            if bits > 1024:
                raise PyCodeError(f"integer constant expression {a!r} {op} {b!r} is too large")
        if op == "*" and isinstance(a, int) and isinstance(b, int) and a.bit_length() + b.bit_length() > 1024:
            raise PyCodeError("integer constant expression is too large")
        result = _PY_OPS[op](a, b)
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise PyCodeError(f"constant expression {a!r} {op} {b!r} fails: {exc}") from exc
    if isinstance(result, complex):
        raise PyCodeError(f"constant expression {a!r} {op} {b!r} is complex")
    return result


_PY_OPS = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b,
    "//": lambda a, b: a // b, "%": lambda a, b: a % b, "**": lambda a, b: a**b, "<<": lambda a, b: a << b,
    ">>": lambda a, b: a >> b, "&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b,
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}  # fmt: skip
TENSOR_BINOPS = ("+", "-", "*", "/", "//", "%", "**", "@")


def fold_py_call(op: str, x):
    if op == "len":
        if isinstance(x, (tuple, list)):
            return len(x)
        return Node("call", ("len",), {"x": x})
    if not _is_num(x):
        raise PyCodeError(f"{op[3:]}() of a tensor is not supported (only of Python numbers)")
    try:
        if op == "py.abs":
            return abs(x)
        if op == "py.float":
            return float(x)
        if op == "py.int":
            return int(x)
        return _MATH_FUNCS[op[3:]](x)
    except (ArithmeticError, ValueError) as exc:
        raise PyCodeError(f"{op[3:]}({x!r}) fails: {exc}") from exc


_MATH_FUNCS = {"sqrt": math.sqrt, "exp": math.exp, "log": math.log, "floor": math.floor, "ceil": math.ceil,
               "cos": math.cos, "sin": math.sin, "tan": math.tan, "log2": math.log2, "log10": math.log10}  # fmt: skip


# ----------------------------------------------------------------------------- the evaluator
class _Frame:
    def __init__(self, co: CodeObject, local_values: dict, closure: tuple):
        self.co, self.locals, self.closure = co, dict(local_values), tuple(closure)
        self.stack: list = []
        self.nodes = 0
        self.kw_names: tuple = ()

    # stack
    def push(self, v) -> None:
        if len(self.stack) >= MAX_STACK:
            raise PyCodeError(f"stack deeper than {MAX_STACK}")
        self.stack.append(v)

    def pop(self):
        if not self.stack:
            raise PyCodeError("stack underflow (corrupt bytecode)")
        return self.stack.pop()

    def popn(self, n: int) -> list:
        if n < 0 or n > len(self.stack):
            raise PyCodeError("stack underflow (corrupt bytecode)")
        out = self.stack[len(self.stack) - n :] if n else []
        del self.stack[len(self.stack) - n :]
        return out

    def node(self, op: str, args: tuple = (), kwargs: Optional[dict] = None) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise PyCodeError(f"more than {MAX_NODES} operations")
        return Node(op, args, kwargs)


def _index(seq: tuple, i: int, what: str):
    if not 0 <= i < len(seq):
        raise PyCodeError(f"{what} index {i} out of range (corrupt bytecode)")
    return seq[i]


def evaluate(co: CodeObject, args: dict, closure: tuple) -> Any:
    """The expression ``co`` returns, with ``args`` (parameter name -> value, Node or constant)
    bound and the free variables taken from ``closure`` in order."""
    if co.flags & (CO_VARARGS | CO_VARKEYWORDS):
        raise PyCodeError("functions with *args or **kwargs are not supported")
    if co.cellvars:
        raise PyCodeError(f"nested functions are not supported (cell variables {list(co.cellvars)})")
    if len(closure) != len(co.freevars):
        raise PyCodeError(f"the function needs {len(co.freevars)} closure values, the file stores {len(closure)}")
    f = _Frame(co, args, closure)
    v = co.version
    for ins in instructions(co):
        name, arg = ins.name, ins.arg
        try:
            result = _step(f, v, name, arg)
        except PyCodeError as exc:
            plain = str(exc) == f"unsupported instruction {name}"
            where = f"at offset {ins.offset}" if plain else f"({name} at offset {ins.offset})"
            raise PyCodeError(f"{exc} {where}, in Python {co.python} bytecode") from None
        if result is not _CONTINUE:
            return result
    raise PyCodeError("the function never returns (corrupt bytecode)")


_CONTINUE = object()
_BINARY = {"BINARY_ADD": "+", "BINARY_SUBTRACT": "-", "BINARY_MULTIPLY": "*", "BINARY_TRUE_DIVIDE": "/",
           "BINARY_FLOOR_DIVIDE": "//", "BINARY_MODULO": "%", "BINARY_POWER": "**", "BINARY_MATRIX_MULTIPLY": "@",
           "INPLACE_ADD": "+", "INPLACE_SUBTRACT": "-", "INPLACE_MULTIPLY": "*", "INPLACE_TRUE_DIVIDE": "/",
           "INPLACE_FLOOR_DIVIDE": "//", "INPLACE_MODULO": "%", "INPLACE_POWER": "**"}  # fmt: skip
_UNARY_OPS = {"UNARY_NEGATIVE": "-", "UNARY_POSITIVE": "+"}
_NOOPS = {"NOP", "RESUME", "PRECALL", "COPY_FREE_VARS", "LIST_TO_TUPLE", "CACHE"}


class UnsupportedInstruction(PyCodeError):
    pass


def _step(f: _Frame, v: tuple, name: str, arg: int):
    co = f.co
    if name in _NOOPS:
        return _CONTINUE
    if name == "POP_TOP":
        f.pop()
    elif name in ("ROT_TWO", "SWAP"):
        n = 2 if name == "ROT_TWO" else arg
        if n < 2 or n > len(f.stack):
            raise PyCodeError("stack underflow (corrupt bytecode)")
        f.stack[-1], f.stack[-n] = f.stack[-n], f.stack[-1]
    elif name in ("DUP_TOP", "COPY"):
        n = 1 if name == "DUP_TOP" else arg
        if n < 1 or n > len(f.stack):
            raise PyCodeError("stack underflow (corrupt bytecode)")
        f.push(f.stack[-n])
    elif name == "LOAD_CONST":
        f.push(_const(_index(co.consts, arg, "constant")))
    elif name == "RETURN_CONST":
        return _returned(_const(_index(co.consts, arg, "constant")))
    elif name == "RETURN_VALUE":
        return _returned(f.pop())
    elif name in ("LOAD_FAST", "LOAD_FAST_CHECK"):
        var = _index(co.localsplus if v >= (3, 11) else co.varnames, arg, "local")
        if var not in f.locals:
            raise PyCodeError(f"local variable '{var}' is read before it is set")
        f.push(f.locals[var])
    elif name == "STORE_FAST":
        var = _index(co.localsplus if v >= (3, 11) else co.varnames, arg, "local")
        f.locals[var] = f.pop()
    elif name == "LOAD_DEREF":
        var = _index(co.localsplus if v >= (3, 11) else co.cellvars + co.freevars, arg, "closure")
        if var not in co.freevars:
            raise PyCodeError(f"cell variable '{var}' is not supported")
        f.push(f.closure[co.freevars.index(var)])  # read from the file's JSON by translate_lambda
    elif name == "LOAD_GLOBAL":
        gname = _index(co.names, arg >> 1 if v >= (3, 11) else arg, "name")
        if v >= (3, 11) and arg & 1:
            f.push(NULL)
        if gname not in GLOBAL_ROOTS:
            raise PyCodeError(f"unsupported global name '{gname}'")
        f.push(Mod(gname))
    elif name in ("LOAD_ATTR", "LOAD_METHOD"):
        method = name == "LOAD_METHOD" or (v >= (3, 12) and arg & 1)
        attr = _index(co.names, arg >> 1 if v >= (3, 12) else arg, "name")
        obj = f.pop()
        if method:
            f.push(NULL)
        f.push(_getattr(f, obj, attr))
    elif name == "PUSH_NULL":
        f.push(NULL)
    elif name == "KW_NAMES":
        names = _index(co.consts, arg, "constant")
        if not (isinstance(names, tuple) and all(isinstance(n, str) for n in names)):
            raise PyCodeError("KW_NAMES of something else than names")
        f.kw_names = names
    elif name in ("CALL_FUNCTION", "CALL_FUNCTION_KW", "CALL_METHOD", "CALL"):
        _call_instruction(f, v, name, arg)
    elif name in _BINARY or name == "BINARY_OP":
        if name == "BINARY_OP":
            if not 0 <= arg < 2 * len(NB_OPS):
                raise PyCodeError(f"BINARY_OP argument {arg} out of range")
            op = NB_OPS[arg % len(NB_OPS)]
        else:
            op = _BINARY[name]
        b, a = f.pop(), f.pop()
        f.push(_binop(f, op, a, b))
    elif name in _UNARY_OPS or (name == "CALL_INTRINSIC_1" and arg == 5):
        a = f.pop()
        op = _UNARY_OPS.get(name, "+")
        if _is_num(a):
            f.push(-a if op == "-" else +a)
        else:
            f.push(f.node("unary", (op, _tensorish(a))))
    elif name == "CALL_INTRINSIC_1" and arg == 6:  # INTRINSIC_LIST_TO_TUPLE
        return _CONTINUE
    elif name == "COMPARE_OP":
        idx = arg >> 4 if v >= (3, 12) else arg
        if not 0 <= idx < len(CMP_OPS):
            raise UnsupportedInstruction(f"unsupported comparison (argument {arg})")
        b, a = f.pop(), f.pop()
        f.push(_binop(f, CMP_OPS[idx], a, b))
    elif name == "BINARY_SUBSCR":
        index, obj = f.pop(), f.pop()
        f.push(_subscript(f, obj, index))
    elif name == "BINARY_SLICE":
        stop, start, obj = f.pop(), f.pop(), f.pop()
        f.push(_subscript(f, obj, _slice(f, (start, stop, None))))
    elif name == "BUILD_SLICE":
        if arg not in (2, 3):
            raise PyCodeError(f"BUILD_SLICE of {arg} parts")
        parts = f.popn(arg)
        f.push(_slice(f, tuple(parts) + ((None,) if arg == 2 else ())))
    elif name in ("BUILD_TUPLE", "BUILD_LIST"):
        f.push(_sequence(f, f.popn(arg)))
    elif name == "LIST_EXTEND":
        if arg != 1:
            raise UnsupportedInstruction("LIST_EXTEND below the top of the stack")
        items, base = f.pop(), f.pop()
        if not (isinstance(items, tuple) and isinstance(base, tuple)):
            raise UnsupportedInstruction("unpacking a tensor into a list (*x) is not supported")
        f.push(base + items)
    elif name == "UNPACK_SEQUENCE":
        seq = f.pop()
        if isinstance(seq, tuple):
            if len(seq) != arg:
                raise PyCodeError(f"cannot unpack {len(seq)} values into {arg}")
            items = list(seq)
        elif isinstance(seq, Node) and seq.op == "tuple":
            if len(seq.args) != arg:
                raise PyCodeError(f"cannot unpack {len(seq.args)} values into {arg}")
            items = list(seq.args)
        elif isinstance(seq, Node):
            items = [f.node("unpack", (seq, i, arg)) for i in range(arg)]
        else:
            raise PyCodeError(f"cannot unpack {_describe(seq)}")
        for item in reversed(items):
            f.push(item)
    else:
        raise UnsupportedInstruction(f"unsupported instruction {name}")
    return _CONTINUE


def _returned(value):
    if isinstance(value, Node) or (isinstance(value, tuple) and value and all(isinstance(x, Node) for x in value)):
        return value
    raise PyCodeError(f"the function returns {_describe(value)}, not a tensor")


def _describe(value) -> str:
    if isinstance(value, Mod):
        return f"'{value.path}'"
    if isinstance(value, Node):
        return "a tensor"
    if isinstance(value, CodeObject):
        return "a nested function"
    return f"the constant {value!r}"[:80]


def _const(value):
    if isinstance(value, CodeObject):
        raise UnsupportedInstruction("nested functions (lambdas, comprehensions) are not supported")
    if isinstance(value, (frozenset, bytes, complex)):
        raise PyCodeError(f"constants of type {type(value).__name__} are not supported")
    if isinstance(value, tuple):
        return tuple(_const(x) for x in value)
    return value


def json_value(value, what: str, depth: int = 0):
    """A value from the file's JSON (closure, defaults, arguments) as an evaluator constant."""
    if depth > 16:
        raise PyCodeError(f"{what} is nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
            raise PyCodeError(f"{what} is too large an integer")
        return value
    if isinstance(value, (list, tuple)):
        if len(value) > 1 << 16:
            raise PyCodeError(f"{what} is too long")
        return tuple(json_value(x, what, depth + 1) for x in value)
    if isinstance(value, dict) and value.get("class_name") in ("__numpy__", "__tensor__"):
        inner = value.get("config")
        return json_value(inner.get("value") if isinstance(inner, dict) else None, what, depth + 1)
    if isinstance(value, dict) and value.get("class_name") == "module" and isinstance(value.get("config"), str):
        path = value["config"]  # Keras 3's record of a module the function closes over (``keras``, ``numpy``)
        if path.replace(".", "").isidentifier() and path.split(".")[0] in GLOBAL_ROOTS and _known_prefix(path):
            return Mod(path)
        raise PyCodeError(f"{what}: module '{path[:60]}' is not supported")
    raise PyCodeError(f"{what} of type {type(value).__name__} is not supported")


def _tensorish(a):
    if isinstance(a, Mod):
        raise PyCodeError(f"'{a.path}' is used as a value")
    if a is NULL or isinstance(a, CodeObject):
        raise PyCodeError("corrupt bytecode (a NULL or code object used as a value)")
    return a


def _binop(f: _Frame, op: str, a, b):
    a, b = _tensorish(a), _tensorish(b)
    if _is_num(a) and _is_num(b):
        return fold_binop(op, a, b)
    if isinstance(a, (str, tuple)) and isinstance(b, (str, tuple)) and op in ("+", "==", "!="):
        if op == "+" and type(a) is type(b) and len(a) + len(b) <= 1 << 16:
            return a + b
        return fold_binop(op, a, b) if op != "+" else _too_long()
    if op not in TENSOR_BINOPS + CMP_OPS:
        raise UnsupportedInstruction(f"unsupported operator '{op}'")
    if isinstance(a, str) or isinstance(b, str) or not (isinstance(a, Node) or isinstance(b, Node)):
        raise PyCodeError(f"operator '{op}' on {_describe(a)} and {_describe(b)} is not supported")
    return f.node("binop", (op, a, b))


def _too_long():
    raise PyCodeError("sequence constant too long")


def _slice(f: _Frame, parts: tuple):
    for p in parts:
        _tensorish(p)
        if not (p is None or isinstance(p, (int, Node)) and not isinstance(p, bool)):
            raise PyCodeError(f"slice bound {_describe(p)} is not an integer")
    if any(isinstance(p, Node) for p in parts):
        return f.node("slice", parts)
    return slice(*parts)


def _sequence(f: _Frame, items: list):
    for item in items:
        _tensorish(item)
    if any(isinstance(x, Node) for x in items):
        return f.node("tuple", tuple(items))
    return tuple(items)


def _subscript(f: _Frame, obj, index):
    obj, index = _tensorish(obj), _tensorish(index)
    if isinstance(obj, tuple) and isinstance(index, int) and not isinstance(index, bool):
        if -len(obj) <= index < len(obj):
            return obj[index]
        raise PyCodeError(f"index {index} out of range")
    if not isinstance(obj, Node):
        raise PyCodeError(f"subscript of {_describe(obj)}")
    parts = index if isinstance(index, tuple) else (index,)
    for p in parts:
        ok = p is None or p is Ellipsis or isinstance(p, (int, slice, Node)) and not isinstance(p, bool)
        if not ok:
            raise PyCodeError(f"index {_describe(p)} is not supported")
    return f.node("getitem", (obj, index))


def _getattr(f: _Frame, obj, attr: str):
    if isinstance(obj, Mod):
        path = f"{obj.path}.{attr}"
        norm = resolve(path)
        if norm in CONSTANTS:
            return CONSTANTS[norm]
        if path in CONSTANTS:
            return CONSTANTS[path]
        if not _known_prefix(path):
            raise PyCodeError(f"unsupported function or attribute '{path}'")
        return Mod(path)
    if isinstance(obj, Node) and attr == "shape":
        return f.node("call", ("int_shape",), {"x": obj})
    raise PyCodeError(f"unsupported attribute '.{attr}' of {_describe(obj)}")


def _call_instruction(f: _Frame, v: tuple, name: str, arg: int) -> None:
    kwargs: dict = {}
    if v == (3, 5):
        if name != "CALL_FUNCTION":
            raise UnsupportedInstruction(f"unsupported instruction {name} (a *args / **kwargs call)")
        npos, nkw = arg & 0xFF, (arg >> 8) & 0xFF
        for key, value in reversed([tuple(f.popn(2)) for _ in range(nkw)]):
            if not isinstance(key, str):
                raise PyCodeError("keyword argument name is not a string")
            kwargs[key] = value
        pos = f.popn(npos)
        fn = f.pop()
    else:
        names: tuple = ()
        if name == "CALL_FUNCTION_KW":
            names = f.pop()
            if not (isinstance(names, tuple) and all(isinstance(n, str) for n in names)):
                raise PyCodeError("keyword names of CALL_FUNCTION_KW are not strings")
        elif name == "CALL":
            names, f.kw_names = f.kw_names, ()
        values = f.popn(arg)
        if len(names) > len(values):
            raise PyCodeError("more keyword names than arguments")
        pos = values[: len(values) - len(names)]
        kwargs = dict(zip(names, values[len(values) - len(names) :]))
        fn = f.pop()
        if name in ("CALL_METHOD", "CALL") or (name == "CALL_FUNCTION" and v >= (3, 11)):
            if f.pop() is not NULL:
                raise UnsupportedInstruction("calling a method of a value is not supported")
    f.push(call(f, fn, pos, kwargs))


def call(f: _Frame, fn, pos: list, kwargs: dict):
    if not isinstance(fn, Mod):
        raise PyCodeError(f"calling {_describe(fn)} is not supported")
    norm = resolve(fn.path)
    entry = FUNCTIONS.get(norm)
    if entry is None:
        raise PyCodeError(f"unsupported function '{fn.path}'")
    op, signature = entry
    bound = _bind(fn.path, signature, pos, kwargs)
    if op == "epsilon":
        return KERAS_EPSILON
    for value in bound.values():
        _tensorish(value)
    if op.startswith("py.") or op == "len":
        return fold_py_call(op, bound[_param(signature[0])[0]])
    return f.node("call", (op,), _canonical(signature, bound))


# the table's parameter names, per library, -> one name per meaning for the torch side
_RENAME = {"y": "y", "x2": "y", "a": "y", "min_value": "lo", "clip_value_min": "lo", "x_min": "lo",
           "max_value": "hi", "clip_value_max": "hi", "x_max": "hi", "newshape": "shape", "pattern": "perm",
           "axes": "perm", "interpolation": "method", "height_factor": "fh", "width_factor": "fw", "b": "y",
           "multiples": "n", "depth": "num_classes"}  # fmt: skip
_DROP = {"name", "seed", "out_type", "conjugate"}


def _canonical(signature: tuple, bound: dict) -> dict:
    first = _param(signature[0])[0] if signature else None
    first = None if first == "shape" else first  # random ops: their first parameter is not a tensor
    out = {}
    for key, value in bound.items():
        if key in _DROP:
            continue
        if key == first:
            key = "x"
        elif key == "keep_dims":
            if value is None:
                continue
            key = "keepdims"
        elif key in ("reduction_indices", "dim", "squeeze_dims"):
            if value is None:
                continue
            key = "axis"
        else:
            key = _RENAME.get(key, key)
        if key == "keepdims" and value is None:
            value = False
        out[key] = value
    return out


def _param(p) -> tuple:
    return (p, _REQUIRED) if isinstance(p, str) else p


_REQUIRED = object()


def _bind(path: str, signature: tuple, pos: list, kwargs: dict) -> dict:
    params = [_param(p) for p in signature]
    if len(pos) > len(params):
        raise PyCodeError(f"{path}() given {len(pos)} positional arguments, the supported form takes {len(params)}")
    out = {}
    for (pname, _), value in zip(params, pos):
        out[pname] = value
    names = {p for p, _ in params}
    for key, value in kwargs.items():
        if key not in names:
            raise PyCodeError(f"{path}() keyword argument '{key}' is not supported")
        if key in out:
            raise PyCodeError(f"{path}() got '{key}' twice")
        out[key] = value
    for pname, default in params:
        if pname not in out:
            if default is _REQUIRED:
                raise PyCodeError(f"{path}() is missing its argument '{pname}'")
            out[pname] = default
    # one name per meaning: the table's first parameter is the tensor operand
    return out
