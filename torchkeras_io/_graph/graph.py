"""A Keras Sequential / Functional graph as a torch module (built by :mod:`.build`).

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

from torchkeras_io._keras.config import Ref
from torchkeras_io._layers.registry import Built

#: stand-ins for unknown (None) sizes during shape inference: a size that differs between the
#: two runs is unknown
PLACEHOLDERS = (29, 37)


def to_cf(t: torch.Tensor) -> torch.Tensor:
    # contiguous NCHW, not a channels-last view: oneDNN's NHWC convolutions accumulate less
    # accurately (1e-5 relative on a 7x7x64 conv, against 2e-6 in NCHW)
    return t.movedim(-1, 1).contiguous() if t.dim() >= 3 else t


def to_cl(t: torch.Tensor) -> torch.Tensor:
    return t.movedim(1, -1) if t.dim() >= 3 else t


def convert(t: Any, have: str, want: str) -> Any:
    """``t`` in layout ``want`` ("cf" or "cl") from layout ``have``."""
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


def refs_in(x: Any) -> list:
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

    # ------------------------------------------------------------------------------ building
    def add_input(self, name: str, shape: tuple, dtype: Optional[str]) -> None:
        self._inputs.append((name, 0))
        self.input_shapes.append(shape)
        self.input_dtypes.append(dtype or "float32")

    def add_layer(self, key: str, name: str, built: Built) -> None:
        """Layer ``name`` (Keras) as ``layers[key]``, run as ``built`` says."""
        self.layers[key] = built.module
        self._layouts[key] = (built.layout, built.out_layout)
        self._mask_modes[key] = built.mask
        self._names[key] = name
        if built.weights is not None:
            self._weights[key] = built.weights

    def has_key(self, key: str) -> bool:
        return key in self.layers or key in self._layouts

    def add_step(self, step: Step) -> None:
        self._steps.append(step)

    def set_outputs(self, refs: list) -> None:
        self._outputs = list(refs)

    def order_layers(self, keys: list) -> None:
        """Register the layers in this order: Keras flattens nested models' weights in config order."""
        self.layers = nn.ModuleDict({key: self.layers[key] for key in keys})

    # ------------------------------------------------------------------------------ running
    def run_step(self, step: Step, values: dict, masks: dict, state: Optional[dict] = None) -> list:
        """Run one layer call; record its outputs' Keras masks in ``masks``."""
        module = self.layers[step.key]
        layout, out_layout = self._layouts[step.key]
        mask_mode = self._mask_modes.get(step.key, "drop")
        refs = refs_in([step.args, step.kwargs])
        if layout == "any":
            ranks = [values[(r.layer, r.node)][r.tensor] for r in refs]
            layout = "cf" if ranks and all(lay == "cf" for _, lay in ranks) else "cl"

        def fetch(r: Ref):
            t, have = values[(r.layer, r.node)][r.tensor]
            return convert(t, have, layout)

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
        outs = [convert(*values[(r.layer, r.node)][r.tensor], "cl") for r in self._outputs]
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
            values[(step.layer, step.node)] = self.run_step(step, values, masks)
        return values

    def layer_outputs(self, *inputs: torch.Tensor) -> dict:
        """Every layer call's outputs in Keras's layout: ``{(layer name, node index): [tensor, ...]}``.

        What a Keras functional model with every layer output computes, for per-layer comparisons."""
        return {key: [convert(t, lay, "cl") for t, lay in outs] for key, outs in self._values(inputs).items()}

    # ------------------------------------------------------------------------------ weights
    def keras_layer_names(self, prefix: str = "", *, flatten: bool = True) -> dict:
        """``{module path: Keras layer name}`` for every layer with weights.

        ``flatten``: a nested model is one layer, as tf-keras's HDF5 files flatten its weights into
        one group; else its layers one by one, as Keras 3 stores them at their own paths."""
        out = {}
        for key, rel in self._weights.items():
            path = f"{prefix}layers.{key}" + (f".{rel}" if rel else "")
            sub = self.layers[key]
            if not flatten and isinstance(sub, KerasGraph) and not rel:
                out.update(sub.keras_layer_names(f"{path}.", flatten=False))
            else:
                out[path] = self._names[key]
        return out

    def keras_layers(self) -> list:
        """``[(Keras layer name, module)]`` in registration order."""
        return [(self._names.get(key, key), module) for key, module in self.layers.items()]

    def keras_inputs(self) -> list:
        """``[(input layer name, Keras shape)]``, batch axis first."""
        return [(name, shape) for (name, _), shape in zip(self._inputs, self.input_shapes)]

    def output_shapes(self) -> dict:
        """``{Keras layer name: [output shape, ...]}`` (None for unknown sizes, a non-tensor output
        None), by running the graph on meta tensors: the first call's outputs of each layer."""
        runs = []
        for placeholder in PLACEHOLDERS:
            values, masks, shapes = {}, {}, {}
            for key, shape, dt in zip(self._inputs, self.input_shapes, self.input_dtypes):
                values[key] = [(meta_tensor(shape, placeholder, torch_dtype(dt)), "cl")]
                shapes[key[0]] = [values[key][0][0]]
            for step in self._steps:
                module = self.layers[step.key]
                state = meta_state(module)
                with torch.no_grad():
                    out = self.run_step(step, values, masks, state)
                values[(step.layer, step.node)] = out
                shapes.setdefault(step.layer, [convert(t, lay, "cl") for t, lay in out])
            runs.append(shapes)
        result = {}
        for name, outs in runs[0].items():
            other = runs[1][name]
            result[name] = [shape_of([a, b]) if isinstance(a, torch.Tensor) else None for a, b in zip(outs, other)]
        return result

    def extra_repr(self) -> str:
        return f"name={self.keras_name!r}, kind={self.keras_kind!r}"


# ---------------------------------------------------------------------------- shape inference
def meta_tensor(shape: tuple, placeholder: int, dtype: torch.dtype) -> torch.Tensor:
    """A storage-free tensor of a Keras shape, ``placeholder`` for each unknown (None) size."""
    return torch.empty(tuple(placeholder if s is None else int(s) for s in shape), dtype=dtype, device="meta")


def meta_state(module: nn.Module) -> dict:
    """The module's parameters and buffers as meta tensors, for ``torch.func.functional_call``."""
    state = {n: torch.empty_like(t, device="meta") for n, t in module.named_parameters()}
    state.update((n, torch.empty_like(t, device="meta")) for n, t in module.named_buffers())
    return state


def shape_of(pair: list) -> tuple:
    """The Keras shape of a value from its two placeholder runs: None where their sizes differ."""
    a, b = pair
    return tuple(None if x != y else int(x) for x, y in zip(a.shape, b.shape)) if a.dim() else ()


def torch_dtype(name: Optional[str]) -> torch.dtype:
    """The torch dtype of a Keras dtype name (float32 for None and names without one)."""
    table = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
             "int32": torch.int32, "int64": torch.int64, "bool": torch.bool, "uint8": torch.uint8,
             "int8": torch.int8, "int16": torch.int16}  # fmt: skip
    return table.get(name or "float32", torch.float32)
