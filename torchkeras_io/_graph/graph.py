"""A Keras Sequential / Functional graph as a torch module, and how one is built from a config.

Tensors flow between layers in Keras's layout, except that runs of layers that prefer torch's
channels-first layout (convolutions, pooling, batch norm on the channel axis, …) pass
channels-first views between them: the layout changes only where the preference changes, and
the model's inputs and outputs are always in Keras's layout.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
from torch import nn

from torchkeras_io._keras.config import MODEL_CLASSES, Call, LayerDef, ModelDef, Ref
from torchkeras_io._layers.registry import BUILDERS, BuildContext, Built, unsupported
from torchkeras_io.errors import FileFormatError, UnsupportedLayerError

_PLACEHOLDERS = (29, 37)  # stand-ins for unknown (None) sizes during shape inference


def to_cf(t: torch.Tensor) -> torch.Tensor:
    # contiguous NCHW, not a channels-last view: oneDNN's NHWC convolutions accumulate less
    # accurately (1e-5 relative on a 7x7x64 conv, against 2e-6 in NCHW)
    return t.movedim(-1, 1).contiguous() if t.dim() >= 3 else t


def to_cl(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(1, -1) if t.dim() >= 3 else t


def _convert(t: Any, have: str, want: str) -> Any:
    if not isinstance(t, torch.Tensor) or have == want or t.dim() < 3:
        return t
    return to_cf(t) if want == "cf" else to_cl(t)


@dataclasses.dataclass
class Step:
    key: str  # ModuleDict key of the layer
    layer: str  # Keras layer name
    node: int
    args: Any  # structure of Ref and constants
    kwargs: dict


def _map_refs(x: Any, fn) -> Any:
    if isinstance(x, Ref):
        return fn(x)
    if isinstance(x, list):
        return [_map_refs(v, fn) for v in x]
    if isinstance(x, tuple):
        return tuple(_map_refs(v, fn) for v in x)
    if isinstance(x, dict):
        return {k: _map_refs(v, fn) for k, v in x.items()}
    return x


def _map_leaves(x: Any, fn) -> Any:
    """:func:`_map_refs` applied to every leaf, the non-tensor operands too."""
    if isinstance(x, list):
        return [_map_leaves(v, fn) for v in x]
    if isinstance(x, tuple):
        return tuple(_map_leaves(v, fn) for v in x)
    if isinstance(x, dict):
        return {k: _map_leaves(v, fn) for k, v in x.items()}
    return fn(x)


def _refs_in(x: Any) -> list:
    out = []
    _map_refs(x, lambda r: out.append(r))
    return out


class KerasGraph(nn.Module):
    """A converted Keras model: ``forward`` takes and returns tensors in Keras's layout."""

    def __init__(self, name: str, kind: str) -> None:
        super().__init__()
        self.keras_name = name
        self.keras_kind = kind
        self.layers = nn.ModuleDict()
        self._layouts: dict = {}  # key -> (layout, out_layout)
        self._mask_modes: dict = {}  # key -> how the layer treats Keras masks (see Built.mask)
        self._weights: dict = {}  # key -> relative path of the weights module, for weighted layers
        self._names: dict = {}  # key -> Keras layer name
        self._inputs: list = []  # (layer, node) of each model input
        self._outputs: list = []  # Ref of each model output
        self._steps: list = []
        self.keras_config: Optional[dict] = None  # the config it was built from, for to_json / save_model
        self.input_shapes: list = []  # Keras shapes of the inputs, batch axis first
        self.input_dtypes: list = []

    # ------------------------------------------------------------------------------ running
    def _run(self, step: Step, values: dict, masks: dict, state: Optional[dict] = None) -> list:
        """Run one layer call; record its outputs' Keras masks in ``masks``."""
        module = self.layers[step.key]
        layout, out_layout = self._layouts[step.key]
        mask_mode = self._mask_modes.get(step.key, "drop")
        refs = _refs_in([step.args, step.kwargs])
        if layout == "any":
            ranks = [values[(r.layer, r.node)][r.tensor] for r in refs]
            layout = "cf" if ranks and all(lay == "cf" for _, lay in ranks) else "cl"

        def fetch(r: Ref):
            t, have = values[(r.layer, r.node)][r.tensor]
            return _convert(t, have, layout)

        args = _map_refs(step.args, fetch)
        kwargs = {k: v for k, v in _map_refs(step.kwargs, fetch).items() if k != "training"}
        x = args[0] if len(args) == 1 else args
        # operands that are not tensors (Keras 3 ops nodes such as ``x * (1.0 / 6.0)``) have no mask
        in_masks = _map_leaves(step.args[0] if len(step.args) == 1 else step.args,
                               lambda r: masks.get((r.layer, r.node, r.tensor)) if isinstance(r, Ref) else None)  # fmt: skip
        has_mask = any(m is not None for m in (in_masks if isinstance(in_masks, list) else [in_masks]))
        if mask_mode in ("consume", "compute") and "mask" not in kwargs and has_mask:
            kwargs["mask"] = in_masks
        elif mask_mode not in ("consume", "compute"):
            kwargs.pop("mask", None)
        if mask_mode == "consume":  # masks of inputs passed by keyword (tf.keras MultiHeadAttention value=, key=)
            for name in getattr(module, "keyword_masks", ()):
                r = step.kwargs.get(name)
                if isinstance(r, Ref) and kwargs.get(f"{name}_mask") is None:
                    m = masks.get((r.layer, r.node, r.tensor))
                    if m is not None:
                        kwargs[f"{name}_mask"] = m
        if state is None:
            out = module(x, **kwargs)
        else:  # shape inference: the same call on meta tensors, weights included
            out = torch.func.functional_call(module, state, (x,), kwargs)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        lay = out_layout or layout
        if mask_mode == "pass" and has_mask:
            first = in_masks[0] if isinstance(in_masks, list) else in_masks
            for i in range(len(outs)):
                masks[(step.layer, step.node, i)] = first
        elif mask_mode in ("consume", "compute") and hasattr(module, "compute_mask"):
            out_masks = module.compute_mask(x, kwargs.get("mask"))
            out_masks = out_masks if isinstance(out_masks, (list, tuple)) else [out_masks] * len(outs)
            for i, m in enumerate(out_masks):
                if m is not None:
                    masks[(step.layer, step.node, i)] = m
        return [(t, lay if isinstance(t, torch.Tensor) and t.dim() >= 3 else "cl") for t in outs]

    def forward(self, *inputs: torch.Tensor):
        values = self._values(inputs)
        outs = [_convert(*values[(r.layer, r.node)][r.tensor], "cl") for r in self._outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _values(self, inputs: tuple) -> dict:
        """Run the graph: ``{(layer, node): [(tensor, layout), ...]}`` for every layer call."""
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) and len(self._inputs) > 1:
            inputs = tuple(inputs[0])
        if len(inputs) != len(self._inputs):
            raise TypeError(f"{self.keras_name} takes {len(self._inputs)} input(s), got {len(inputs)}")
        values, masks = {}, {}
        for key, x in zip(self._inputs, inputs):
            values[key] = [(x if isinstance(x, torch.Tensor) else torch.as_tensor(x), "cl")]
        for step in self._steps:
            values[(step.layer, step.node)] = self._run(step, values, masks)
        return values

    def layer_outputs(self, *inputs: torch.Tensor) -> dict:
        """Every layer call's outputs in Keras's layout: ``{(layer name, node index): [tensor, ...]}``.

        What a Keras functional model with every layer output computes, for per-layer comparisons."""
        return {key: [_convert(t, lay, "cl") for t, lay in outs] for key, outs in self._values(inputs).items()}

    # ------------------------------------------------------------------------------ weights
    def keras_layer_names(self, prefix: str = "") -> dict:
        """``{module path: Keras layer name}`` for every layer with weights (nested models whole)."""
        out = {}
        for key, rel in self._weights.items():
            path = f"{prefix}layers.{key}" + (f".{rel}" if rel else "")
            out[path] = self._names[key]
        return out

    def extra_repr(self) -> str:
        return f"name={self.keras_name!r}, kind={self.keras_kind!r}"


# ---------------------------------------------------------------------------------- building
def _meta(shape: tuple, placeholder: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(tuple(placeholder if s is None else int(s) for s in shape), dtype=dtype, device="meta")


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
        while key in self.graph.layers or key in self.graph._layouts:
            key, i = f"{base}_{i}", i + 1
        return key

    def run(self) -> KerasGraph:
        if self.model.kind == "Sequential":
            self._sequential()
        else:
            self._functional()
        if self.errors:
            raise _combined(self.errors, self.ctx)
        # register layers in config order: Keras flattens nested models' weights in that order
        order = [self.built[layer.name] for layer in self.model.layers if self.built.get(layer.name)]
        modules = {key: self.graph.layers[key] for key in order}
        self.graph.layers = nn.ModuleDict(modules)
        return self.graph

    # -- inputs
    def _input(self, name: str, shape, dtype: Optional[str]) -> None:
        if shape is None:
            raise FileFormatError(f"input '{name}' of model '{self.model.name}' has no known shape; "
                                  "pass input_shape to build it")  # fmt: skip
        shape = tuple(None if s is None else int(s) for s in shape)
        tdtype = _torch_dtype(dtype)
        self.graph._inputs.append((name, 0))
        self.graph.input_shapes.append(shape)
        self.graph.input_dtypes.append(dtype or "float32")
        self.shapes[(name, 0)] = [[_meta(shape, p, tdtype) for p in _PLACEHOLDERS]]

    def _sequential(self) -> None:
        shape = self.given_shapes[0] if self.given_shapes else self.model.input_shape
        self._input("input", shape, self.model.input_dtype)
        prev = Ref("input", 0, 0)
        for layer in self.model.layers:
            call = Call([prev], {})
            if not self._call(layer, 0, call):
                return
            prev = Ref(layer.name, 0, 0)
        self.graph._outputs = [prev]

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
                p for p in pending if all((r.layer, r.node) in self.shapes for r in _refs_in([p[2].args, p[2].kwargs]))
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
        self.graph._outputs = list(model.outputs)

    # -- one call of one layer
    def _call(self, layer: LayerDef, node: int, call: Call) -> bool:
        in_meta = [self.shapes[(r.layer, r.node)][r.tensor] for r in _refs_in(call.args)]
        if layer.name not in self.built:
            try:
                built = self._build(layer, [_shape_of(m) for m in in_meta], call)
            except UnsupportedLayerError as exc:
                self.errors.append(exc)
                return False
            key = self.key_for(layer.name)
            if layer.config.get("trainable") is False:
                built.module.requires_grad_(False)
            self.graph.layers[key] = built.module
            self.graph._layouts[key] = (built.layout, built.out_layout)
            self.graph._mask_modes[key] = built.mask
            self.graph._names[key] = layer.name
            if built.weights is not None:
                self.graph._weights[key] = built.weights
            self.built[layer.name] = key
        key = self.built[layer.name]
        step = Step(key, layer.name, node, call.args, call.kwargs)
        module = self.graph.layers[key]
        state = {n: torch.empty_like(t, device="meta") for n, t in module.named_parameters()}
        state.update((n, torch.empty_like(t, device="meta")) for n, t in module.named_buffers())
        outs = []
        for i in range(len(_PLACEHOLDERS)):
            values = {k: [(v[j][i], "cl") for j in range(len(v))] for k, v in self.shapes.items()}
            masks = {k: v[i] for k, v in self.masks.items()}
            try:
                with torch.no_grad():
                    result = self.graph._run(step, values, masks, state)
                    outs.append([t for t, lay in (_convert_pair(o) for o in result)])
                for k, m in masks.items():
                    self.masks.setdefault(k, [None] * len(_PLACEHOLDERS))[i] = m
            except (RuntimeError, ValueError, TypeError, IndexError) as exc:
                self.errors.append(unsupported(layer, f"cannot be applied to inputs of shape "
                                                      f"{[_shape_of(m) for m in in_meta]}: {exc}"))  # fmt: skip
                return False
        self.shapes[(layer.name, node)] = [list(pair) for pair in zip(*outs)]
        self.graph._steps.append(step)
        return True

    def _build(self, layer: LayerDef, in_shapes: list, call: Call) -> Built:
        if layer.model is not None:
            sub = _Builder(layer.model, self.ctx, in_shapes if layer.model.kind == "Functional" else in_shapes[:1])
            graph = sub.run()
            return Built(graph, "cl", "" if _has_weights(graph) else None)
        custom = self.ctx.custom_objects.get(layer.name, self.ctx.custom_objects.get(layer.class_name))
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
            return builder(layer, in_shapes, self.ctx)
        except UnsupportedLayerError:
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise unsupported(layer, f"unreadable config: {exc}") from exc


def _convert_pair(pair):
    t, lay = pair
    return _convert(t, lay, "cl"), "cl"


def _shape_of(pair: list) -> tuple:
    a, b = pair
    return tuple(None if x != y else int(x) for x, y in zip(a.shape, b.shape)) if a.dim() else ()


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def _torch_dtype(name: Optional[str]) -> torch.dtype:
    table = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
             "int32": torch.int32, "int64": torch.int64, "bool": torch.bool, "uint8": torch.uint8,
             "int8": torch.int8, "int16": torch.int16}  # fmt: skip
    return table.get(name or "float32", torch.float32)


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
            out.append(UnsupportedLayerError(
                f"Lambda '{name}': its stored Python code is never run (and targets Keras/TensorFlow ops, "
                f"not torch); pass custom_objects={{'{name}': factory}} with a torch module that computes it",
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
    return _Builder(model, ctx, input_shapes).run()
