"""``torchkeras-io inspect FILE``: what a checkpoint file holds, read without any model code."""

from __future__ import annotations

import contextlib
import json
import textwrap

import numpy as np

from torchkeras_io.cli.common import EXIT_OK, fmt_bytes, fmt_shape, print_table
from torchkeras_io.cli.contents import FORMATS, Contents, read_contents


def register(sub, epilog: str, formatter) -> None:
    s = sub.add_parser("inspect", help="format, Keras version, layers and weights, training config, optimizer",
                       description=textwrap.fill("Show what a checkpoint file holds: its format and Keras version, every layer "
                       "with its weights' names, shapes, dtypes and sizes, the training config and a summary of "
                       "the optimizer state. Needs no model code.", 96), epilog=epilog, formatter_class=formatter)  # fmt: skip
    s.add_argument("file", help="a .h5, .keras, .weights.h5, .safetensors or torch state_dict file")
    s.add_argument("--json", action="store_true", help="print one JSON object instead (stable keys, for scripts)")
    s.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> int:
    """``inspect FILE``: what the file holds, as a table or (``--json``) one JSON object."""
    with contextlib.ExitStack() as stack:
        c = read_contents(args.file, stack)
        if args.json:
            print(json.dumps(_summary(c), indent=2))
        else:
            _print_inspect(c)
    return EXIT_OK


def _summary(c: Contents) -> dict:
    params = sum(int(np.prod(w.shape, dtype=np.int64)) for layer in c.layers for w in layer.weights)
    out = {
        "file": c.path,
        "format": c.format,
        "format_description": FORMATS[c.format],
        "keras_version": c.keras_version,
        "backend": c.backend,
        "model": c.model,
        "names": c.names,
        "layers": [
            {
                "name": layer.name,
                "class_name": layer.class_name,
                "keras_name": layer.keras_name,
                "weights": [w.as_json() for w in layer.weights],
            }
            for layer in c.layers
        ],  # fmt: skip
        "num_layers": len(c.layers),
        "num_weights": c.weight_count(),
        "num_params": params,
        "nbytes": sum(w.nbytes for layer in c.layers for w in layer.weights),
        "training_config": c.training_config,
        "optimizer": c.optimizer,
    }
    out.update(c.extra)
    return out


def _describe_training(tc: dict) -> list:
    lines = []
    opt = tc.get("optimizer_config") or tc.get("optimizer")
    if isinstance(opt, dict):
        cfg = opt.get("config") if isinstance(opt.get("config"), dict) else {}
        keys = ("learning_rate", "lr", "momentum", "beta_1", "beta_2", "epsilon", "rho", "weight_decay")
        hyper = ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg and not isinstance(cfg[k], (dict, list)))
        lines.append(f"optimizer {opt.get('class_name')}" + (f" ({hyper})" if hyper else ""))
    for key in ("loss", "metrics", "weighted_metrics", "loss_weights"):
        if tc.get(key) not in (None, [], {}):
            lines.append(f"{key} {json.dumps(tc[key])[:200]}")
    return lines


def _print_inspect(c: Contents) -> None:
    s = _summary(c)
    print(f"file:          {c.path}")
    print(f"format:        {FORMATS[c.format]}")
    if c.keras_version or c.backend:
        print(f"keras version: {c.keras_version or '?'}" + (f" (backend {c.backend})" if c.backend else ""))
    if c.model:
        print(f"model:         {c.model.get('class_name')} '{c.model.get('name')}'")
    else:
        print("model:         none (weights only: no architecture in the file)")
    if c.names:
        print(f"names:         {'Keras <layer>/<weight>' if c.names == 'keras' else 'torch state_dict keys'}")
    print(f"weights:       {s['num_weights']} in {len(c.layers)} layers, {s['num_params']:,} values, "
          f"{fmt_bytes(s['nbytes'])}")  # fmt: skip
    for key, value in c.extra.items():
        if value:
            print(f"{key + ':':<14} {value}")
    if c.layers:
        print()
        rows = [("layer", "weight", "shape", "dtype", "size")]
        for layer in c.layers:
            label = layer.name + (f" ({layer.class_name})" if layer.class_name else "")
            if layer.keras_name and layer.keras_name != layer.name.rsplit("/", 1)[-1]:
                label += f" name='{layer.keras_name}'"
            rows.append((label, "", "", "", ""))
            for w in layer.weights:
                rows.append(("", w.name, fmt_shape(w.shape), w.dtype, fmt_bytes(w.nbytes)))
        print_table(rows)
    print()
    if c.training_config:
        print("training config:")
        for line in _describe_training(c.training_config) or [json.dumps(c.training_config)[:200]]:
            print(f"  {line}")
    else:
        print("training config: none")
    if c.optimizer:
        o = c.optimizer
        it = f", iterations {o['iterations']}" if o.get("iterations") is not None else ""
        print(f"optimizer state: {o.get('class_name') or '?'}: {o['variables']} variables, "
              f"{fmt_bytes(o['nbytes'])}{it}")  # fmt: skip
    else:
        print("optimizer state: none")
