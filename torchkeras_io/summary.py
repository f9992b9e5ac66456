"""``Model.summary``: the Keras-style table of layers, output shapes and parameter counts."""

from __future__ import annotations

import torch
from torch import nn

from torchkeras_io._graph.graph import KerasGraph
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


def _graph_shapes(graph: KerasGraph) -> dict:
    """Keras layer name -> output shapes (None for unknown sizes), by running the graph on meta tensors."""
    from torchkeras_io._graph.graph import _PLACEHOLDERS, _convert, _meta, _shape_of, _torch_dtype

    runs = []
    for placeholder in _PLACEHOLDERS:
        values, masks, shapes = {}, {}, {}
        for key, shape, dt in zip(graph._inputs, graph.input_shapes, graph.input_dtypes):
            values[key] = [(_meta(shape, placeholder, _torch_dtype(dt)), "cl")]
            shapes[key[0]] = [values[key][0][0]]
        for step in graph._steps:
            module = graph.layers[step.key]
            state = {n: torch.empty_like(t, device="meta") for n, t in module.named_parameters()}
            state.update((n, torch.empty_like(t, device="meta")) for n, t in module.named_buffers())
            with torch.no_grad():
                out = graph._run(step, values, masks, state)
            values[(step.layer, step.node)] = out
            shapes.setdefault(step.layer, [_convert(t, lay, "cl") for t, lay in out])
        runs.append(shapes)
    result = {}
    for name, outs in runs[0].items():
        other = runs[1][name]
        result[name] = [_shape_of([a, b]) if isinstance(a, torch.Tensor) else None for a, b in zip(outs, other)]
    return result


def _keras_classes(config) -> dict:
    """Keras layer name -> Keras class name, from a model config (any Keras generation)."""
    if not isinstance(config, dict):
        return {}
    inner = config.get("config", config)
    layers = inner.get("layers") if isinstance(inner, dict) else inner
    out = {}
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and isinstance(layer.get("config"), dict):
            name = layer["config"].get("name", layer.get("name"))
            if isinstance(name, str) and isinstance(layer.get("class_name"), str):
                out[name] = layer["class_name"]
    return out


def summary_rows(module: nn.Module, input_shape) -> list:
    """(name, type, output shape text, param count) per layer."""
    rows = []
    if isinstance(module, KerasGraph):
        try:
            shapes = _graph_shapes(module)
        except Exception:  # noqa: BLE001 - shapes are a nicety; the table is printed without them
            shapes = {}
        classes = _keras_classes(module.keras_config)
        if module.keras_kind != "Sequential":  # Keras lists a functional model's InputLayers
            for (name, _), shape in zip(module._inputs, module.input_shapes):
                rows.append((name, "InputLayer", _fmt_shape([shape]), 0))
        for key, layer in module.layers.items():
            name = module._names.get(key, key)
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
