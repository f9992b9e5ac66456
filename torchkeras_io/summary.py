"""``Model.summary``: the Keras-style table of layers, output shapes and parameter counts."""

from __future__ import annotations

import torch
from torch import nn

from torchkeras_io._graph.graph import KerasGraph
from torchkeras_io._keras.config import config_layers, entry_name
from torchkeras_io._placement import module_device, module_float_dtype


def counted_buffer(name: str, buf: torch.Tensor) -> bool:
    """Buffers Keras counts as non-trainable weights (moving statistics), not bookkeeping."""
    return buf.is_floating_point() and not name.endswith("num_batches_tracked")


def _fmt_shape(shape) -> str:
    if shape is None:
        return "?"
    if isinstance(shape, list):
        return ", ".join(_fmt_shape(s) for s in shape) if len(shape) != 1 else _fmt_shape(shape[0])
    return "(" + ", ".join("None" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def _count(module: nn.Module) -> int:
    n = sum(p.numel() for p in module.parameters())
    return n + sum(b.numel() for name, b in module.named_buffers() if counted_buffer(name, b))


def _keras_classes(config) -> dict:
    """Keras layer name -> Keras class name, from a model config (any Keras generation)."""
    out = {}
    for entry in config_layers(config):
        name, cls = entry_name(entry), entry.get("class_name")
        if name is not None and isinstance(cls, str):
            out[name] = cls
    return out


def summary_rows(module: nn.Module, input_shape) -> list:
    """(name, type, output shape text, param count) per layer."""
    rows = []
    if isinstance(module, KerasGraph):
        try:
            shapes = module.output_shapes()
        except Exception:  # noqa: BLE001 - shapes are a nicety; the table is printed without them
            shapes = {}
        classes = _keras_classes(module.keras_config)
        if module.keras_kind != "Sequential":  # Keras lists a functional model's InputLayers
            for name, shape in module.keras_inputs():
                rows.append((name, "InputLayer", _fmt_shape([shape]), 0))
        for name, layer in module.keras_layers():
            ltype = classes.get(name) or (layer.keras_kind if isinstance(layer, KerasGraph) else type(layer).__name__)
            rows.append((name, ltype, _fmt_shape(shapes.get(name)), _count(layer)))
        return rows
    owners = [(n, m) for n, m in module.named_modules()
              if any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))]  # fmt: skip
    shapes: dict = {}
    if input_shape is not None:
        shapes = _hook_shapes(module, [n for n, _ in owners], input_shape)
    for n, m in owners:
        own = sum(p.numel() for p in m.parameters(recurse=False))
        own += sum(b.numel() for bn, b in m.named_buffers(recurse=False) if counted_buffer(bn, b))
        rows.append((n or type(module).__name__.lower(), type(m).__name__, _fmt_shape(shapes.get(n)), own))
    return rows


def _hook_shapes(module: nn.Module, names: list, input_shape) -> dict:
    shapes_in = input_shape if isinstance(input_shape, list) else [input_shape]
    device, dtype = module_device(module), module_float_dtype(module)
    shapes, handles = {}, []
    wanted = set(names)

    def hook(name):
        def fn(_mod, _inp, out):
            outs = out if isinstance(out, (tuple, list)) else [out]
            shapes[name] = [(None, *t.shape[1:]) for t in outs if isinstance(t, torch.Tensor)][:1] or None

        return fn

    for n, m in module.named_modules():
        if n in wanted:
            handles.append(m.register_forward_hook(hook(n)))
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(*[torch.zeros((2, *tuple(s)), device=device, dtype=dtype) for s in shapes_in])
    except Exception:  # noqa: BLE001 - shapes are optional in the table
        pass
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    return shapes
