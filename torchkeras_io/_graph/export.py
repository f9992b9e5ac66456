"""torch modules -> Keras model configs that tf-keras 2.x and Keras 3 both rebuild.

The module is traced with ``torch.fx``; modules with a registered exporter stay leaves. Every
value is followed as a Keras tensor together with a permutation ``perm`` such that
``keras_tensor == torch_tensor.permute(perm)``: the Keras model takes the torch module's own
input layout, convolutions run channels-last (TensorFlow has no channels-first convolution
on CPU), and ``Permute`` layers appear only where a consumer needs another order — torch
``permute``/``transpose`` calls cost nothing, they just change ``perm``. Keras tensors always
carry the batch first, so ``perm[0]`` is the torch axis holding the batch: sequence-first torch
values ``(time, batch, features)`` are followed as Keras ``(batch, time, features)``.

Tracing is :mod:`.tracer`'s; the Keras tensor (:class:`~torchkeras_io._layers.trace.KT`) and the
layers common to many exporters are in :mod:`torchkeras_io._layers.trace`, which the family
exporters share; operations with no built-in layer and tensors read in ``forward`` are in
:mod:`.export_ext`.
"""

from __future__ import annotations

import json
import operator
import re
from typing import Any, Optional, Sequence

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from torchkeras_io._formats.legacy_h5 import KERAS_VERSION
from torchkeras_io._graph import export_ext
from torchkeras_io._graph.tracer import example_inputs, trace
from torchkeras_io._keras.keras3 import keras_snake
from torchkeras_io._layers.registry import WeightSource, exporter_for, function_exporter
from torchkeras_io._layers.slicing import export_getitem
from torchkeras_io._layers.trace import KT, binary, channels_last, dropped, out_spec, shape_op, softmax
from torchkeras_io._placement import module_device
from torchkeras_io.errors import TorchKerasIOError, UnsupportedLayerError


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
    def layer_entry(self, name: str) -> Optional[dict]:
        """The config entry of the layer named ``name`` (None for none)."""
        return self._by_name.get(name)

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


# ------------------------------------------------------------------------------------ export
def _batch_axes(batch_axis, shapes: list) -> list:
    axes = list(batch_axis) if isinstance(batch_axis, (list, tuple)) else [batch_axis] * len(shapes)
    if len(axes) != len(shapes) or not all(isinstance(b, int) and 0 <= b <= len(s) for b, s in zip(axes, shapes)):
        raise TorchKerasIOError(f"batch_axis {batch_axis!r} does not fit the inputs of per-sample shapes {shapes}: give "
                                "one axis index per input, between 0 and the input's rank")  # fmt: skip
    return axes


def export_config(module: nn.Module, input_shape=None, *, channels_last_io: bool = False, batch_axis=0) -> tuple:
    """(Keras model config dict, weight sources, context) for ``module``."""
    if input_shape is None:
        input_shape = _guess_input_shape(module)
    shapes = [tuple(input_shape)] if not input_shape or not isinstance(input_shape[0], (list, tuple)) else [
        tuple(s) for s in input_shape]  # fmt: skip
    batch_axes = _batch_axes(batch_axis, shapes)
    if channels_last_io and any(batch_axes):
        raise TorchKerasIOError("channels_last=True needs batch-first inputs (batch_axis=0)")
    gm = trace(module, shapes, batch_axes)
    interp = torch.fx.Interpreter(gm, garbage_collect_values=False)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            interp.run(*[x.to(module_device(module)) for x in example_inputs(gm, shapes, batch_axes)])
    except Exception as exc:
        raise TorchKerasIOError(f"running {type(module).__name__} on inputs of shape {shapes} failed: {exc}") from exc
    finally:
        module.train(was_training)
    values = interp.env
    ctx = ExportContext(module, keras_snake(type(module).__name__, split_digits=True))
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
        elif node.op == "get_attr":  # a parameter or buffer read in forward: a Keras weight
            env[node] = export_ext.export_param(ctx, gm, node, values[node])
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
    handled = export_ext.export_op(ctx, node, args, kwargs, value)  # matmul, roll, comparisons, parameters
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
            return binary(ctx, _METHOD_BINARY[name], args[0], args[1] if len(args) > 1 else kwargs.get("other"), value)
        if name in ("permute", "transpose", "view", "reshape", "flatten", "mean", "softmax", "unsqueeze", "squeeze"):
            return shape_op(ctx, name, x, args[1:], kwargs, value)
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
        return softmax(ctx, args[0], dim, value)
    if target in _BINARY:
        return binary(ctx, _BINARY[target], args[0], args[1], value)
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
        return ctx.add("Concatenate", {"axis": axis}, aligned, [out_spec(ctx, first, value)], name=node.name)[0]
    if target in (torch.flatten,):
        return shape_op(ctx, "flatten", args[0], args[1:], kwargs, value)
    if target in (torch.permute, torch.transpose, torch.reshape, torch.mean, torch.unsqueeze, torch.squeeze):
        return shape_op(ctx, target.__name__, args[0], args[1:], kwargs, value)
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


def _global_pool(ctx, x: KT, size, value, cls: str) -> KT:
    sizes = size if isinstance(size, (list, tuple)) else [size]
    if any(s != 1 for s in sizes):
        raise ctx.fail("adaptive pooling to a size other than 1")
    x = ctx.as_channels_last(x)
    rank = x.rank - 2
    return ctx.add1(f"{cls}{rank}D", {"keepdims": True}, x, tuple(value.shape), channels_last(value.dim()),
                    name=ctx.node.name)  # fmt: skip


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
        return ctx.add1("Reshape", {"target_shape": [x.shape[c]]}, cropped, tuple(value.shape), dropped(seq.perm, t),
                        name=ctx.node.name)  # fmt: skip
    return export_getitem(ctx, x, index, value)  # slices, integer indices, None, Ellipsis on any axis
