"""Building a :class:`.graph.KerasGraph` from a normalised Keras model config.

Every layer nothing can build is reported at once, before anything is built; then the layers are
built in call order, each call run on meta tensors of two placeholder sizes to learn the shapes
the next layers get (:data:`.graph.PLACEHOLDERS`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch
from torch import nn

from torchkeras_io._graph.graph import (
    PLACEHOLDERS,
    KerasGraph,
    Step,
    convert,
    meta_state,
    meta_tensor,
    refs_in,
    shape_of,
    torch_dtype,
)
from torchkeras_io._keras.config import MODEL_CLASSES, Call, LayerDef, ModelDef, Ref, parse_layer
from torchkeras_io._layers.lambdas import lambda_refusal
from torchkeras_io._layers.registry import BUILDERS, BuildContext, Built, unsupported
from torchkeras_io.errors import FileFormatError, UnsupportedLayerError


class _Builder:
    def __init__(self, model: ModelDef, ctx: BuildContext, input_shapes: Optional[list] = None):
        self.model, self.ctx = model, ctx
        self.graph = KerasGraph(model.name, model.kind)
        self.given_shapes = input_shapes
        self.errors: list = []
        self.shapes: dict = {}  # (layer, node) -> list of (shape, dtype) per output, for 2 placeholders
        self.built: dict = {}  # layer name -> key
        self.masks: dict = {}  # (layer, node, tensor) -> Keras mask per placeholder run

    def key_for(self, name: str) -> str:
        key = name.replace(".", "_") or "_"
        base, i = key, 1
        while self.graph.has_key(key):
            key, i = f"{base}_{i}", i + 1
        return key

    def run(self) -> KerasGraph:
        if self.model.kind == "Sequential":
            self._sequential()
        else:
            self._functional()
        if self.errors:
            raise _combined(self.errors, self.ctx)
        self.graph.order_layers([self.built[layer.name] for layer in self.model.layers if self.built.get(layer.name)])
        return self.graph

    # -- inputs
    def _input(self, name: str, shape, dtype: Optional[str]) -> None:
        if shape is None:
            raise FileFormatError(f"input '{name}' of model '{self.model.name}' has no known shape; "
                                  "pass input_shape to build it")  # fmt: skip
        shape = tuple(None if s is None else int(s) for s in shape)
        tdtype = torch_dtype(dtype)
        self.graph.add_input(name, shape, dtype)
        self.shapes[(name, 0)] = [[meta_tensor(shape, p, tdtype) for p in PLACEHOLDERS]]

    def _sequential(self) -> None:
        shape = self.given_shapes[0] if self.given_shapes else self.model.input_shape
        self._input("input", shape, self.model.input_dtype)
        prev = Ref("input", 0, 0)
        for layer in self.model.layers:
            call = Call([prev], {})
            if not self._call(layer, 0, call):
                return
            prev = Ref(layer.name, 0, 0)
        self.graph.set_outputs([prev])

    def _functional(self) -> None:
        model = self.model
        layers = {layer.name: layer for layer in model.layers}
        for i, ref in enumerate(model.inputs):
            layer = layers[ref.layer]
            if layer.class_name != "InputLayer":
                raise FileFormatError(f"model input '{ref.layer}' is a {layer.class_name}, not an InputLayer")
            shape = self.given_shapes[i] if self.given_shapes else layer.config.get("batch_input_shape")
            self._input(layer.name, shape, layer.config.get("dtype"))
        pending = [(layer, n, call) for layer in model.layers if layer.class_name != "InputLayer"
                   for n, call in enumerate(layer.calls)]  # fmt: skip
        while pending:
            ready = [
                p for p in pending if all((r.layer, r.node) in self.shapes for r in refs_in([p[2].args, p[2].kwargs]))
            ]
            if not ready:
                missing = sorted({f"{lay.name}[{n}]" for lay, n, _ in pending})
                raise FileFormatError(f"model '{model.name}': layer calls {missing[:10]} depend on tensors "
                                      "that are never computed (a cycle or a dangling reference)")  # fmt: skip
            for p in ready:
                pending.remove(p)
                if not self._call(*p):
                    return
        for ref in model.outputs:
            if (ref.layer, ref.node) not in self.shapes:
                raise FileFormatError(f"model output {ref.layer}[{ref.node}] is never computed")
        self.graph.set_outputs(model.outputs)

    # -- one call of one layer
    def _call(self, layer: LayerDef, node: int, call: Call) -> bool:
        in_meta = [self.shapes[(r.layer, r.node)][r.tensor] for r in refs_in(call.args)]
        if layer.name not in self.built:
            try:
                built = build_layer(layer, [shape_of(m) for m in in_meta], self.ctx)
            except UnsupportedLayerError as exc:
                self.errors.append(exc)
                return False
            key = self.key_for(layer.name)
            if layer.config.get("trainable") is False:
                built.module.requires_grad_(False)
            self.graph.add_layer(key, layer.name, built)
            self.built[layer.name] = key
        key = self.built[layer.name]
        step = Step(key, layer.name, node, call.args, call.kwargs)
        module = self.graph.layers[key]
        state = meta_state(module)
        outs = []
        for i in range(len(PLACEHOLDERS)):
            values = {k: [(v[j][i], "cl") for j in range(len(v))] for k, v in self.shapes.items()}
            masks = {k: v[i] for k, v in self.masks.items()}
            try:
                with torch.no_grad():
                    result = self.graph.run_step(step, values, masks, state)
                    outs.append([t for t, lay in (_convert_pair(o) for o in result)])
                for k, m in masks.items():
                    self.masks.setdefault(k, [None] * len(PLACEHOLDERS))[i] = m
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                self.errors.append(unsupported(layer, f"cannot be applied to inputs of shape "
                                                      f"{[shape_of(m) for m in in_meta]}: {exc}"))  # fmt: skip
                return False
        self.shapes[(layer.name, node)] = [list(pair) for pair in zip(*outs)]
        self.graph.add_step(step)
        return True


def build_layer(layer: LayerDef, in_shapes: list, ctx: BuildContext) -> Built:
    """The torch module of one layer: a nested model, a ``custom_objects`` factory's module, else the
    registered builder of its class."""
    if layer.model is not None:
        sub = _Builder(layer.model, ctx, in_shapes if layer.model.kind == "Functional" else in_shapes[:1])
        graph = sub.run()
        return Built(graph, "cl", "" if _has_weights(graph) else None)
    custom = ctx.custom_objects.get(layer.name, ctx.custom_objects.get(layer.class_name))
    if custom is not None:
        module = custom(dict(layer.config))
        if not isinstance(module, nn.Module):
            raise unsupported(layer, "custom_objects factory did not return an nn.Module")
        return Built(module, "cl", "" if any(True for _ in module.parameters()) else None)
    builder = BUILDERS.get(layer.class_name)
    if builder is None:
        raise unsupported(layer, "no torch equivalent is known; supply one with "
                                 f"custom_objects={{'{layer.class_name}': factory}}")  # fmt: skip
    try:
        return builder(layer, in_shapes, ctx)
    except UnsupportedLayerError:
        raise
    except (KeyError, ValueError, TypeError) as exc:
        raise unsupported(layer, f"unreadable config: {exc}") from exc


def build_wrapped(entry: dict, name: str, in_shapes: list, ctx: BuildContext) -> Built:
    """A layer given whole inside another layer's config (``TimeDistributed``'s ``layer``), named
    ``name``: the builders' ``ctx.build_nested``."""
    cls, cfg = entry["class_name"], entry.get("config", {})
    if cls in MODEL_CLASSES:
        layer = parse_layer({"class_name": cls, "config": cfg}, ctx.generation, 1, BUILDERS)
    else:
        layer = LayerDef(cls, name, cfg)
    return build_layer(layer, in_shapes, ctx)


def _convert_pair(pair):
    t, lay = pair
    return convert(t, lay, "cl"), "cl"


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _combined(errors: list, ctx: BuildContext) -> UnsupportedLayerError:
    if len(errors) == 1:
        err = errors[0]
        return UnsupportedLayerError(err.message, filepath=ctx.filepath, layer=err.layer)
    lines = "\n".join(f"  - {e.message}" for e in errors)
    return UnsupportedLayerError(f"{len(errors)} layers cannot be converted:\n{lines}", filepath=ctx.filepath)


def _unknown_layers(model: ModelDef, ctx: BuildContext) -> list:
    """Every layer (nested and wrapped ones included) that nothing can build, as errors."""
    out = []

    def check(class_name: str, name: str, cfg: dict) -> None:
        if name in ctx.custom_objects or class_name in ctx.custom_objects or class_name in MODEL_CLASSES:
            return  # a model wrapped in a layer (TimeDistributed(Sequential)) is checked when built
        if class_name == "Lambda":
            why = lambda_refusal(cfg, ctx.generation)  # its bytecode translated to torch, never run
            if why is not None:
                out.append(UnsupportedLayerError(
                    f"Lambda '{name}': its stored Python code is never run, and it could not be translated: "
                    f"{why}; pass custom_objects={{'{name}': factory}} with a torch module that computes it",
                    layer=name))  # fmt: skip
        elif class_name not in BUILDERS:
            out.append(UnsupportedLayerError(
                f"{class_name} '{name}': no torch equivalent is known; pass custom_objects={{'{class_name}': "
                "factory} (a callable taking the layer's config dict and returning an nn.Module)", layer=name))  # fmt: skip
        for key in ("layer", "backward_layer"):
            inner = cfg.get(key)
            if isinstance(inner, dict) and "class_name" in inner:
                check(
                    inner["class_name"], f"{name}/{inner.get('config', {}).get('name', key)}", inner.get("config", {})
                )

    def walk(m: ModelDef) -> None:
        for layer in m.layers:
            if layer.model is not None:
                walk(layer.model)
            elif not (m.kind == "Functional" and layer.class_name == "InputLayer"):
                check(layer.class_name, layer.name, layer.config)

    walk(model)
    return out


def build_graph(model: ModelDef, ctx: BuildContext, input_shapes: Optional[list] = None) -> KerasGraph:
    """Build the torch module for a normalised Keras model config.

    Every layer nothing can build is reported at once, before anything is built.
    """
    unknown = _unknown_layers(model, ctx)
    if unknown:
        raise _combined(unknown, ctx)
    if ctx.build_nested is None:
        ctx = dataclasses.replace(ctx)
        ctx.build_nested = functools.partial(build_wrapped, ctx=ctx)
    return _Builder(model, ctx, input_shapes).run()
