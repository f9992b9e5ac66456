"""torch modules -> Keras model configs that tf-keras 2.x and Keras 3 both rebuild.

The module is traced with ``torch.fx``; modules with a registered exporter stay leaves. Every
value is followed as a Keras tensor together with a permutation ``perm`` such that
``keras_tensor == torch_tensor.permute(perm)``: the Keras model takes the torch module's own
input layout, convolutions run channels-last (TensorFlow has no channels-first convolution
on CPU), and ``Permute`` layers appear only where a consumer needs another order — torch
``permute``/``transpose`` calls cost nothing, they just change ``perm``. Keras tensors always
carry the batch first, so ``perm[0]`` is the torch axis holding the batch: sequence-first torch
values ``(time, batch, features)`` are followed as Keras ``(batch, time, features)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import re
from typing import Any, Optional, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from torchkeras_io._graph import export_ext as _export_ext
from torchkeras_io._layers.registry import WeightSource, exporter_for, function_exporter
from torchkeras_io.errors import TorchKerasIOError, UnsupportedLayerError

KERAS_VERSION = "2.15.0"


@dataclasses.dataclass(frozen=True)
class KT:
    """A Keras tensor during export: its producer, its axis order and the torch value's shape."""

    ref: tuple  # (layer name, node index, tensor index)
    perm: tuple  # keras tensor == torch tensor.permute(perm)
    shape: tuple  # torch shape, batch axis first
    dtype: torch.dtype

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def batch_axis(self) -> int:
        """The torch axis that holds the batch (Keras axis 0)."""
        return self.perm[0]

    @property
    def keras_shape(self) -> tuple:
        return tuple(self.shape[p] for p in self.perm)

    def keras_axis(self, torch_axis: int) -> int:
        """Position of torch axis ``torch_axis`` in the Keras tensor."""
        return self.perm.index(torch_axis % self.rank)

    def torch_order(self) -> tuple:
        """torch's own axis order with the batch axis moved first (identity for batch-first values)."""
        b = self.batch_axis
        return (b,) + tuple(a for a in range(self.rank) if a != b)


def identity(rank: int) -> tuple:
    return tuple(range(rank))


def channels_last(rank: int) -> tuple:
    """torch (N, C, *spatial) -> Keras (N, *spatial, C)."""
    return (0,) + tuple(range(2, rank)) + (1,) if rank >= 3 else identity(rank)


class ExportContext:
    """Collects the Keras layers of the model being exported."""

    def __init__(self, root: nn.Module, name: str) -> None:
        self.root = root
        self.name = name
        self.layers: list = []
        self._by_name: dict = {}
        self._module_layer: dict = {}  # (id(module), part) -> layer entry, for modules called twice
        self.weights: list = []
        self._permuted: dict = {}  # (KT, perm) -> KT: one Permute layer per value and order
        self.node = None  # the fx node being exported, for error messages

    # -- naming
    def unique(self, base: str) -> str:
        # TensorFlow scope names: [A-Za-z0-9.][A-Za-z0-9_.\\-/>]*, and no '/' for Keras 3
        # and no '.': Keras 3 on torch registers variables under "<layer>/<name>", where torch forbids dots
        base = re.sub(r"[^A-Za-z0-9_\-]", "_", base).lstrip("_-") or "layer"
        name, i = base, 1
        while name in self._by_name:
            name, i = f"{base}_{i}", i + 1
        return name

    def fail(self, what: str) -> UnsupportedLayerError:
        node = self.node
        where = f"node '{node.name}' ({node.op} {_target_name(node)})" if node is not None else "the module"
        return UnsupportedLayerError(f"{where}: {what}", layer=node.name if node is not None else None)

    # -- layers
    def add(self, class_name: str, config: dict, inputs, outputs: Sequence[tuple], *, name: str,
            kwargs: Optional[dict] = None, module: Optional[nn.Module] = None, part: int = 0,
            weights: Optional[WeightSource] = None) -> list:  # fmt: skip
        """Add (or call again) a Keras layer; ``outputs`` are (torch shape, perm, dtype) per output."""
        ins = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        key = (id(module), part) if module is not None else None
        entry = self._module_layer.get(key) if key is not None else None
        if entry is None:
            lname = self.unique(name)
            entry = {"class_name": class_name, "config": {"name": lname, "trainable": True, "dtype": "float32", **config},
                     "name": lname, "inbound_nodes": []}  # fmt: skip
            self.layers.append(entry)
            self._by_name[lname] = entry
            if key is not None:
                self._module_layer[key] = entry
            if weights is not None:
                weights.keras_name = lname
                self.weights.append(weights)
        kw = _serialize_kwargs(kwargs or {})
        entry["inbound_nodes"].append([[t.ref[0], t.ref[1], t.ref[2], kw] for t in ins])
        node_index = len(entry["inbound_nodes"]) - 1
        return [KT((entry["name"], node_index, i), tuple(p), tuple(s), d) for i, (s, p, d) in enumerate(outputs)]

    def add1(self, class_name: str, config: dict, x: KT, shape, perm, **kw) -> KT:
        """A one-input, one-output layer."""
        return self.add(class_name, config, x, [(shape, perm, x.dtype)], **kw)[0]

    def input(self, name: str, shape: tuple, dtype: torch.dtype, perm: tuple) -> KT:
        lname = self.unique(name)
        kshape = [None] + [shape[p] for p in perm[1:]]
        kdtype = "int32" if not dtype.is_floating_point else str(dtype).removeprefix("torch.")
        entry = {"class_name": "InputLayer", "config": {"batch_input_shape": kshape, "dtype": kdtype, "sparse": False,
                 "ragged": False, "name": lname}, "name": lname, "inbound_nodes": []}  # fmt: skip
        self.layers.append(entry)
        self._by_name[lname] = entry
        return KT((lname, 0, 0), tuple(perm), tuple(shape), dtype)

    def permute(self, x: KT, perm: tuple) -> KT:
        """``x`` with Keras axis order ``perm`` (a Permute layer when it differs)."""
        perm = tuple(perm)
        if x.perm == perm:
            return x
        if perm[0] != x.batch_axis:
            raise self.fail(f"it needs the batch in torch axis {perm[0]} but it is in axis {x.batch_axis} "
                            "(Keras keeps the batch first)")  # fmt: skip
        if (x, perm) not in self._permuted:
            dims = [x.perm.index(p) for p in perm]
            self._permuted[x, perm] = self.add1("Permute", {"dims": dims[1:]}, x, x.shape, perm,
                                                name=f"{self._hint()}_permute")  # fmt: skip
        return self._permuted[x, perm]

    def as_torch(self, x: KT) -> KT:
        """``x`` in torch's axis order, except that the batch comes first."""
        return self.permute(x, x.torch_order())

    def as_channels_last(self, x: KT) -> KT:
        return self.permute(x, channels_last(x.rank))

    def layer_name(self, node) -> str:
        """Keras layer names follow module paths, '.' made '_' (load_weights(by_name) accepts both)."""
        return str(node.target).replace(".", "_") if node.op == "call_module" else node.name

    def _hint(self) -> str:
        return self.layer_name(self.node) if self.node is not None else "t"


def _serialize_kwargs(kwargs: dict) -> dict:
    out = {}
    for k, v in kwargs.items():
        out[k] = [v.ref[0], v.ref[1], v.ref[2]] if isinstance(v, KT) else v
    return out


def _target_name(node) -> str:
    t = node.target
    return getattr(t, "__name__", None) or str(t)


# ----------------------------------------------------------------------------------- tracing
class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return exporter_for(m) is not None or super().is_leaf_module(m, qualname)


def _trace(module: nn.Module, input_shapes=None, batch_axes=None) -> torch.fx.GraphModule:
    """fx graph of ``module`` in eval mode (the export describes inference: ``self.training`` is False).

    Optional ``forward`` parameters beyond the given inputs keep their defaults. Symbolic tracing
    comes first; when Python control flow or a shape assert stops it, tracing runs again with
    example inputs of the given shapes riding along (:class:`_ConcreteTracer`), so shape-dependent
    branches and asserts specialise to the input shape the export fixes anyway.
    """
    concrete = _defaulted_args(module, len(input_shapes) if input_shapes is not None else None)
    modes = [(m, m.training) for m in module.modules()]  # each module's own mode (a frozen BN stays frozen)
    module.eval()
    try:
        try:
            graph = _Tracer().trace(module, concrete_args=concrete or None)
        except Exception as exc:  # fx raises many types for untraceable Python control flow
            if input_shapes is None:
                raise UnsupportedLayerError(f"{type(module).__name__} cannot be traced with torch.fx: {exc}") from exc
            graph = _trace_concretely(module, input_shapes, batch_axes, concrete, exc)
    finally:
        for m, training in modes:
            m.training = training
    _drop_specialised_args(graph, len(input_shapes) if input_shapes is not None else None, concrete)
    gm = torch.fx.GraphModule(module, graph)
    from torchkeras_io._layers.functional import modules_for_functional_calls

    modules_for_functional_calls(gm)  # F.conv2d(x, self.weight, ...) and the like: the standard module's call
    return gm


def _defaulted_args(module: nn.Module, n_inputs) -> dict:
    """{name: default} of the ``forward`` parameters after the first ``n_inputs``: not model inputs."""
    import inspect

    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = [p for p in params if p.kind in kinds]
    if n_inputs is None:
        n_inputs = sum(p.default is inspect.Parameter.empty for p in params)
    return {p.name: p.default for p in params[n_inputs:] if p.default is not inspect.Parameter.empty}


def _drop_specialised_args(graph, n_inputs, concrete: dict) -> None:
    """Remove the placeholders fx keeps for defaulted arguments, with the asserts that check them."""
    if not concrete or n_inputs is None:
        return
    extra = [n for n in graph.nodes if n.op == "placeholder"][n_inputs:]
    tainted = set(extra)
    for node in graph.nodes:
        if any(a in tainted for a in node.all_input_nodes):
            tainted.add(node)
    for node in reversed(list(graph.nodes)):
        if node in tainted and not node.users:
            graph.erase_node(node)


class _ConcreteProxy(torch.fx.Proxy):
    """A proxy that also holds the value its node takes on the example inputs."""

    def __len__(self):
        return len(self.tracer.value_of(self))

    def __index__(self):
        return self.tracer.static(self).__index__()

    def __int__(self):
        return int(self.tracer.static(self))


class _ConcreteTracer(_Tracer):
    """fx tracing with example inputs riding along: Python can branch on shapes and iterate sizes."""

    def __init__(self, inputs: dict) -> None:
        super().__init__()
        self._inputs = inputs  # placeholder name -> example value
        self._values: dict = {}
        self._computing = False  # inside a real call: fx's patched Module.__call__ / __getattr__ must not trace

    def call_module(self, m, forward, args, kwargs):
        return forward(*args, **kwargs) if self._computing else super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        return attr_val if self._computing else super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node):
        return _ConcreteProxy(node, self)

    def value_of(self, p):
        return self._values[p.node]

    def static(self, p):
        v = self.value_of(p)
        if isinstance(v, torch.Tensor):  # branching on tensor data would bake in the example's values
            raise torch.fx.proxy.TraceError(f"control flow depends on the data of '{p.node.name}', not on shapes")
        return v

    def to_bool(self, obj) -> bool:
        return bool(self.static(obj))

    def iter(self, obj):
        return iter([obj[i] for i in range(len(self.value_of(obj)))])

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        real = torch.fx.node.map_aggregate((args, kwargs), lambda a: self._values[a.node] if isinstance(
            a, torch.fx.Proxy) else a)  # fmt: skip
        a, kw = real
        self._computing = True
        try:
            value = self._compute(kind, target, a, kw)
        finally:
            self._computing = False
        self._values[proxy.node] = value
        return proxy

    def _compute(self, kind, target, a, kw):
        with torch.no_grad():
            if kind == "placeholder":
                value = self._inputs.get(target, kw.get("default") if isinstance(kw, dict) else None)
                if target not in self._inputs and a:
                    value = a[0]  # a defaulted argument: its default
            elif kind == "get_attr":
                value = self.root
                for part in str(target).split("."):
                    value = getattr(value, part)
            elif kind == "call_function":
                value = target(*a, **kw)
            elif kind == "call_method":
                value = getattr(a[0], target)(*a[1:], **kw)
            elif kind == "call_module":
                value = self.root.get_submodule(target)(*a, **kw)
            else:
                value = None
        return value


def _trace_concretely(module, input_shapes, batch_axes, concrete, first_error):
    import inspect

    names = [p for p in inspect.signature(module.forward).parameters][: len(input_shapes)]
    device = _module_device(module)
    errors = []
    for make in (torch.randn, lambda s: torch.zeros(s, dtype=torch.long)):  # float inputs, else token ids
        inputs = {}
        for name, shape, b in zip(names, input_shapes, batch_axes or [0] * len(input_shapes)):
            shape = [8 if s is None else int(s) for s in shape]
            inputs[name] = make(tuple(shape[:b] + [2] + shape[b:])).to(device)
        try:
            return _ConcreteTracer(inputs).trace(module, concrete_args=concrete or None)
        except Exception as exc:  # noqa: PERF203 - at most two tries
            errors.append(exc)
    raise UnsupportedLayerError(f"{type(module).__name__} cannot be traced with torch.fx: {first_error}; nor with "
                                f"example inputs of the given shapes: {errors[0]}") from errors[0]  # fmt: skip


def _example_inputs(gm: torch.fx.GraphModule, input_shapes: list, batch_axes: list) -> list:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(input_shapes):
        raise TorchKerasIOError(f"the module takes {len(placeholders)} input(s); input_shape gives {len(input_shapes)}")
    out = []
    g = torch.Generator().manual_seed(0)
    for node, shape, b in zip(placeholders, input_shapes, batch_axes):
        shape = [8 if s is None else int(s) for s in shape]
        shape = tuple(shape[:b] + [2] + shape[b:])
        feeds_embedding = any(u.op == "call_module" and isinstance(gm.get_submodule(u.target), nn.Embedding)
                              for u in node.users)  # fmt: skip
        out.append(torch.zeros(shape, dtype=torch.long) if feeds_embedding else torch.randn(shape, generator=g))
    return out


def _module_device(module: nn.Module) -> torch.device:
    from torchkeras_io._placement import module_device  # parameters and buffers: a module of buffers has a device too

    return module_device(module)


# ------------------------------------------------------------------------------------ export
def _batch_axes(batch_axis, shapes: list) -> list:
    axes = list(batch_axis) if isinstance(batch_axis, (list, tuple)) else [batch_axis] * len(shapes)
    if len(axes) != len(shapes) or not all(isinstance(b, int) and 0 <= b <= len(s) for b, s in zip(axes, shapes)):
        raise TorchKerasIOError(f"batch_axis {batch_axis!r} does not fit the inputs of per-sample shapes {shapes}: give "
                                "one axis index per input, between 0 and the input's rank")  # fmt: skip
    return axes


def export_config(module: nn.Module, input_shape=None, *, channels_last_io: bool = False, batch_axis=0) -> tuple:
    """(Keras model config dict, weight sources, context) for ``module``."""
    from torchkeras_io import _layers as _adapters  # noqa: F401  (registers the family exporters)

    if input_shape is None:
        input_shape = _guess_input_shape(module)
    shapes = [tuple(input_shape)] if not input_shape or not isinstance(input_shape[0], (list, tuple)) else [
        tuple(s) for s in input_shape]  # fmt: skip
    batch_axes = _batch_axes(batch_axis, shapes)
    if channels_last_io and any(batch_axes):
        raise TorchKerasIOError("channels_last=True needs batch-first inputs (batch_axis=0)")
    gm = _trace(module, shapes, batch_axes)
    interp = torch.fx.Interpreter(gm, garbage_collect_values=False)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            interp.run(*[x.to(_module_device(module)) for x in _example_inputs(gm, shapes, batch_axes)])
    except Exception as exc:
        raise TorchKerasIOError(f"running {type(module).__name__} on inputs of shape {shapes} failed: {exc}") from exc
    finally:
        module.train(was_training)
    values = interp.env
    ctx = ExportContext(module, _snake(type(module).__name__))
    env: dict = {}
    outputs = None
    placeholders = iter(batch_axes)
    for node in gm.graph.nodes:
        ctx.node = node
        if node.op == "placeholder":
            v, b = values[node], next(placeholders)
            perm = channels_last(v.dim()) if channels_last_io else (b,) + tuple(a for a in range(v.dim()) if a != b)
            env[node] = ctx.input(node.name, tuple(v.shape), v.dtype, perm)
        elif node.op == "output":
            outputs = _map(node.args[0], env)
        elif node.op == "get_attr":  # a parameter or buffer read in forward: a Keras weight (_export_ext)
            env[node] = _export_ext.export_param(ctx, gm, node, values[node])
        else:
            args = _map(node.args, env)
            kwargs = _map(node.kwargs, env)
            value = values[node]
            if node.op == "call_module":
                sub = gm.get_submodule(node.target)
                fn = exporter_for(sub)
                if fn is None:
                    raise ctx.fail(f"{type(sub).__name__} has no Keras equivalent")
                env[node] = fn(ctx, node, sub, args, kwargs, value)
            else:
                env[node] = _export_op(ctx, node, args, kwargs, value)
    ctx.node = None
    outs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    final = []
    for o in outs:
        if not isinstance(o, KT):
            raise TorchKerasIOError(f"the module returns a {type(o).__name__}, not a tensor")
        final.append(ctx.as_channels_last(o) if channels_last_io else ctx.as_torch(o))
    inputs = [e for e in ctx.layers if e["class_name"] == "InputLayer"]
    config = {
        "class_name": "Functional",
        "config": {
            "name": ctx.name,
            "trainable": True,
            "layers": ctx.layers,
            "input_layers": [[e["name"], 0, 0] for e in inputs],
            "output_layers": [list(o.ref) for o in final],
        },
        "keras_version": KERAS_VERSION,
        "backend": "tensorflow",
    }
    return config, ctx.weights, ctx


def _guess_input_shape(module: nn.Module):
    first = next(
        (m for m in module.modules() if exporter_for(m) is not None and not isinstance(m, nn.Sequential)), None
    )
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise TorchKerasIOError(f"pass input_shape (per sample, no batch axis): {type(module).__name__}'s input shape "
                            "cannot be inferred")  # fmt: skip


def _snake(name: str) -> str:
    s = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s).lower()


def _map(x, env):
    if isinstance(x, torch.fx.Node):
        return env[x]
    if isinstance(x, (list, tuple)):
        return type(x)(_map(v, env) for v in x)
    if isinstance(x, dict):
        return {k: _map(v, env) for k, v in x.items()}
    return x


def to_json_string(config: dict) -> str:
    return json.dumps(config)


# ------------------------------------------------------------------------- functions, methods
def _out(ctx: ExportContext, x: KT, value: torch.Tensor, perm=None) -> tuple:
    return (tuple(value.shape), tuple(perm if perm is not None else x.perm), value.dtype)


def _activation(ctx, x: KT, value, activation: str) -> KT:
    return ctx.add1("Activation", {"activation": activation}, x, tuple(value.shape), x.perm,
                    name=ctx.node.name)  # fmt: skip


_ACTIVATIONS = {
    torch.relu: "relu", F.relu: "relu", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
    F.tanh: "tanh", F.silu: "swish", torch.exp: "exponential", F.softplus: "softplus", F.softsign: "softsign",
    F.selu: "selu", torch.selu: "selu",
}  # fmt: skip
_METHOD_ACTIVATIONS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "exp": "exponential"}
_BINARY = {operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub", operator.mul: "mul",
           torch.mul: "mul", operator.truediv: "div", torch.div: "div"}  # fmt: skip
_METHOD_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div"}
_NOOP_METHODS = {"contiguous", "clone", "detach", "float"}


def _export_op(ctx: ExportContext, node, args, kwargs, value) -> Any:
    target = node.target
    if _is_static(value) and not _has_kt((args, kwargs)):
        return value  # arithmetic on shapes (``c // groups``): static once the input shape is fixed
    if node.kwargs.get("inplace") and not node.users:  # ``F.relu(x, inplace=True); return x``: the graph
        raise ctx.fail("an in-place operation whose result is never used (use its result: x = F.relu(x))")
    handled = _export_ext.export_op(ctx, node, args, kwargs, value)  # matmul, roll, comparisons, parameters
    if handled is not NotImplemented:
        return handled
    if node.op == "call_method":
        name = target
        registered = function_exporter(("method", name))  # family exporters of tensor methods (split, chunk, ...)
        if registered is not None:
            return registered(ctx, node, args, kwargs, value)
        if name in ("size", "dim") or not isinstance(value, torch.Tensor):
            return value  # shapes are static once the input shape is fixed
        x = args[0]
        if name in _NOOP_METHODS:
            return x
        if name in _METHOD_ACTIVATIONS:
            return _activation(ctx, x, value, _METHOD_ACTIVATIONS[name])
        if name in _METHOD_BINARY:
            return _binary(ctx, _METHOD_BINARY[name], args[0], args[1] if len(args) > 1 else kwargs.get("other"), value)
        if name in ("permute", "transpose", "view", "reshape", "flatten", "mean", "softmax", "unsqueeze", "squeeze"):
            return _shape_op(ctx, name, x, args[1:], kwargs, value)
        raise ctx.fail(f"tensor method '{name}' has no Keras equivalent")
    registered = function_exporter(target)  # family exporters of torch functions (pooling, dropout, ...)
    if registered is not None:
        return registered(ctx, node, args, kwargs, value)
    if target in _ACTIVATIONS:
        return _activation(ctx, args[0], value, _ACTIVATIONS[target])
    if target in (F.gelu,):
        if kwargs.get("approximate", "none") != "none":
            raise ctx.fail("tanh-approximate GELU has no Keras equivalent that tf-keras and Keras 3 both read")
        return _activation(ctx, args[0], value, "gelu")
    if target in (F.relu6,):
        return ctx.add1("ReLU", {"max_value": 6.0}, args[0], tuple(value.shape), args[0].perm, name=node.name)
    if target in (F.leaky_relu,):
        slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
        return ctx.add1("LeakyReLU", {"alpha": float(slope)}, args[0], tuple(value.shape), args[0].perm, name=node.name)
    if target in (F.elu,):
        alpha = args[1] if len(args) > 1 else kwargs.get("alpha", 1.0)
        return ctx.add1("ELU", {"alpha": float(alpha)}, args[0], tuple(value.shape), args[0].perm, name=node.name)
    if target in (F.softmax, torch.softmax):
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        return _softmax(ctx, args[0], dim, value)
    if target in _BINARY:
        return _binary(ctx, _BINARY[target], args[0], args[1], value)
    if target in (torch.cat, torch.concat, torch.concatenate):
        tensors = list(args[0])
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        first = tensors[0]
        if len(tensors) == 1:  # torch.cat([x]) (DenseNet's first layer): x itself; Concatenate needs two inputs
            return first
        aligned = [ctx.permute(t, first.perm) for t in tensors]
        axis = first.keras_axis(dim)
        if axis == 0:
            raise ctx.fail("concatenation along the batch axis")
        return ctx.add("Concatenate", {"axis": axis}, aligned, [_out(ctx, first, value)], name=node.name)[0]
    if target in (torch.flatten,):
        return _shape_op(ctx, "flatten", args[0], args[1:], kwargs, value)
    if target in (torch.permute, torch.transpose, torch.reshape, torch.mean, torch.unsqueeze, torch.squeeze):
        return _shape_op(ctx, target.__name__, args[0], args[1:], kwargs, value)
    if target is operator.getitem:
        return _getitem(ctx, args[0], args[1], value)
    if target in (F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool3d):
        size = args[1] if len(args) > 1 else kwargs.get("output_size")
        return _global_pool(ctx, args[0], size, value, "GlobalAveragePooling")
    if target in (F.adaptive_max_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool3d):
        size = args[1] if len(args) > 1 else kwargs.get("output_size")
        return _global_pool(ctx, args[0], size, value, "GlobalMaxPooling")
    if target is getattr and args[1] == "shape":
        return value
    raise ctx.fail("this operation has no Keras equivalent (register an exporter or use supported ops)")


def _is_static(value) -> bool:
    """A Python number, shape or None (or a tuple of them): a constant of the exported graph."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Size, torch.dtype)):
        return True
    return isinstance(value, (list, tuple)) and all(_is_static(v) for v in value)


def _has_kt(x) -> bool:
    if isinstance(x, KT):
        return True
    if isinstance(x, (list, tuple)):
        return any(_has_kt(v) for v in x)
    if isinstance(x, dict):
        return any(_has_kt(v) for v in x.values())
    return False


def _softmax(ctx, x: KT, dim, value) -> KT:
    if dim is None:
        raise ctx.fail("softmax without an explicit dim")
    return ctx.add1("Softmax", {"axis": x.keras_axis(dim)}, x, tuple(value.shape), x.perm, name=ctx.node.name)


def _binary(ctx, op: str, a, b, value) -> KT:
    if isinstance(a, KT) and isinstance(b, KT):
        b = ctx.permute(b, a.perm) if b.rank == a.rank else b
        if b.rank != a.rank:
            raise ctx.fail("broadcasting tensors of different rank")
        cls = {"add": "Add", "sub": "Subtract", "mul": "Multiply"}.get(op)
        if cls is None:
            raise ctx.fail("division of two tensors has no Keras layer")
        return ctx.add(cls, {}, [a, b], [_out(ctx, a, value)], name=ctx.node.name)[0]
    x, c = (a, b) if isinstance(a, KT) else (b, a)
    if isinstance(c, torch.Tensor) or not isinstance(c, (int, float)):
        raise ctx.fail("arithmetic with a constant tensor has no Keras layer (only Python numbers)")
    c = float(c)
    if op == "add":
        scale, offset = 1.0, c
    elif op == "sub":
        scale, offset = (1.0, -c) if isinstance(a, KT) else (-1.0, c)
    elif op == "mul":
        scale, offset = c, 0.0
    elif isinstance(a, KT):
        scale, offset = 1.0 / c, 0.0
    else:
        raise ctx.fail("a number divided by a tensor has no Keras layer")
    return ctx.add1("Rescaling", {"scale": scale, "offset": offset}, x, tuple(value.shape), x.perm, name=ctx.node.name)


def _global_pool(ctx, x: KT, size, value, cls: str) -> KT:
    sizes = size if isinstance(size, (list, tuple)) else [size]
    if any(s != 1 for s in sizes):
        raise ctx.fail("adaptive pooling to a size other than 1")
    x = ctx.as_channels_last(x)
    rank = x.rank - 2
    return ctx.add1(f"{cls}{rank}D", {"keepdims": True}, x, tuple(value.shape), channels_last(value.dim()),
                    name=ctx.node.name)  # fmt: skip


def _dims(args) -> list:
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        return list(args[0])
    return list(args)


def _shape_op(ctx, name: str, x: KT, args, kwargs, value) -> Any:
    rank = x.rank
    if name == "permute":
        d = [a % rank for a in _dims(args or kwargs.get("dims"))]
        return _repermuted(ctx, x, d, value)
    if name == "transpose":
        a, b = (args[0] % rank, args[1] % rank) if len(args) >= 2 else (kwargs["dim0"] % rank, kwargs["dim1"] % rank)
        d = list(range(rank))
        d[a], d[b] = d[b], d[a]
        return _repermuted(ctx, x, d, value)
    if name == "mean":
        dims = args[0] if args else kwargs.get("dim")
        dims = sorted(d % rank for d in (dims if isinstance(dims, (list, tuple)) else [dims]))
        keep = bool(args[1] if len(args) > 1 else kwargs.get("keepdim", False))
        if rank >= 3 and dims == list(range(2, rank)):
            x = ctx.as_channels_last(x)
            perm = channels_last(value.dim()) if keep else identity(value.dim())
            return ctx.add1(f"GlobalAveragePooling{rank - 2}D", {"keepdims": keep}, x, tuple(value.shape), perm,
                            name=ctx.node.name)  # fmt: skip
        if rank == 3 and len(dims) == 1 and dims[0] != x.batch_axis and not keep:  # over time: (N, L, C) or (L, N, C)
            b, t = x.batch_axis, dims[0]
            x = ctx.permute(x, (b, t, 3 - b - t))
            return ctx.add1(
                "GlobalAveragePooling1D", {}, x, tuple(value.shape), _dropped(x.perm, t), name=ctx.node.name
            )
        raise ctx.fail(f"mean over axes {dims} of a rank-{rank} tensor")
    if name == "softmax":
        dim = args[0] if args else kwargs.get("dim")
        return _softmax(ctx, x, dim, value)
    # view / reshape / flatten / (un)squeeze: Keras reshapes in its own axis order, so go torch order
    if x.batch_axis != 0:
        raise ctx.fail("reshaping a tensor whose batch is not its first axis (make it batch-first, e.g. "
                       ".transpose(0, 1), before reshaping)")  # fmt: skip
    x = ctx.as_torch(x)
    out_shape = tuple(value.shape)
    if out_shape[0] != x.shape[0]:
        raise ctx.fail("reshaping across the batch axis")
    if len(out_shape) == 2 and out_shape[1] == math.prod(x.shape[1:]):
        if x.rank == 2:
            return x
        return ctx.add1("Flatten", {}, x, out_shape, identity(2), name=ctx.node.name)
    return ctx.add1("Reshape", {"target_shape": list(out_shape[1:])}, x, out_shape, identity(len(out_shape)),
                    name=ctx.node.name)  # fmt: skip


def _repermuted(ctx, x: KT, d: list, value) -> KT:
    inv = [0] * len(d)
    for i, di in enumerate(d):
        inv[di] = i
    return KT(x.ref, tuple(inv[p] for p in x.perm), tuple(value.shape), x.dtype)


def _dropped(perm: tuple, axis: int) -> tuple:
    """``perm`` of a tensor after torch axis ``axis`` is indexed or reduced away."""
    return tuple(p - (p > axis) for p in perm if p != axis)


def _getitem(ctx, x, index, value) -> Any:
    if isinstance(x, (tuple, list)):
        return x[index]
    if not isinstance(x, KT):
        return value
    # one time step of a sequence: x[:, i] on (N, L, C), x[i] on (L, N, C)
    idx = index if isinstance(index, tuple) else (index,)
    ints = [a for a, i in enumerate(idx) if isinstance(i, int)]
    if (x.rank == 3 and len(ints) == 1 and ints[0] != x.batch_axis
            and all(i == slice(None) for a, i in enumerate(idx) if a != ints[0])):  # fmt: skip
        b, t = x.batch_axis, ints[0]
        c = 3 - b - t
        length = x.shape[t]
        i = idx[t] % length
        seq = ctx.permute(x, (b, t, c))
        one = tuple(1 if a == t else n for a, n in enumerate(x.shape))
        cropped = ctx.add1("Cropping1D", {"cropping": [i, length - i - 1]}, seq, one, seq.perm,
                           name=f"{ctx.node.name}_crop")  # fmt: skip
        return ctx.add1("Reshape", {"target_shape": [x.shape[c]]}, cropped, tuple(value.shape), _dropped(seq.perm, t),
                        name=ctx.node.name)  # fmt: skip
    from torchkeras_io._layers.slicing import export_getitem  # slices, integer indices, None, Ellipsis on any axis

    return export_getitem(ctx, x, index, value)
