"""Tracing a torch module with ``torch.fx`` for export: the modules with a registered exporter stay leaves.

Symbolic tracing comes first; when Python control flow or a shape assert stops it, tracing runs
again with example inputs of the given shapes riding along (:class:`_ConcreteTracer`).
"""

from __future__ import annotations

import inspect

import torch
import torch.fx
from torch import nn

from torchkeras_io._layers.functional import modules_for_functional_calls
from torchkeras_io._layers.registry import exporter_for
from torchkeras_io._placement import module_device  # parameters and buffers: a module of buffers has a device too
from torchkeras_io.errors import TorchKerasIOError, UnsupportedLayerError


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return exporter_for(m) is not None or super().is_leaf_module(m, qualname)


def trace(module: nn.Module, input_shapes=None, batch_axes=None) -> torch.fx.GraphModule:
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
    modules_for_functional_calls(gm)  # F.conv2d(x, self.weight, ...) and the like: the standard module's call
    return gm


def _defaulted_args(module: nn.Module, n_inputs) -> dict:
    """{name: default} of the ``forward`` parameters after the first ``n_inputs``: not model inputs."""
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
    names = [p for p in inspect.signature(module.forward).parameters][: len(input_shapes)]
    device = module_device(module)
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


def example_inputs(gm: torch.fx.GraphModule, input_shapes: list, batch_axes: list) -> list:
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
