"""``torchkeras-io verify FILE``: the model run in torchkeras_io and in Keras on the same seeded batch,
with the difference of every layer's output and of the model's outputs."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Optional

import numpy as np
import torch

import torchkeras_io as tkio
from torchkeras_io._checkpoint.reader import LegacyH5Reader
from torchkeras_io._graph.graph import KerasGraph, torch_dtype
from torchkeras_io._keras.config import config_layers
from torchkeras_io.cli.common import EXIT_DIFFERENT, EXIT_OK, UsageError, dumps, fmt_shape, one_line, print_table
from torchkeras_io.cli.contents import detect_format

HELP = """\
Loads FILE in torchkeras_io and in Keras (tf_keras for Keras 2 files, Keras 3 for Keras 3 files
under --keras auto; Keras 3 runs on its torch backend), feeds both the same seeded random batch
(normal floats; token ids below the vocabulary size for inputs that feed an Embedding; unknown
dimensions such as sequence length take --unknown-dim) and prints, for every layer, the largest
absolute and relative difference of its output (relative: max|torch - keras| / max|keras|), then
the same for the model's outputs. Passes (exit 0) when every model output is within --rtol.
Without any Keras installed (and --keras auto) it only checks that the model loads and runs.
"""


def register(sub, epilog: str, formatter) -> None:
    s = sub.add_parser("verify", help="run the model in torchkeras_io and in Keras; per-layer differences",
                       description=HELP, epilog=epilog, formatter_class=formatter)  # fmt: skip
    s.add_argument("file", metavar="FILE", help="a Keras full-model file")
    s.add_argument("--keras", choices=("auto", "tf_keras", "keras3"), default="auto",
                   help="the reference implementation (default auto: by the file's Keras version)")  # fmt: skip
    s.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance of the outputs (default 1e-5; "
                   "recurrent models may need 1e-4)")  # fmt: skip
    s.add_argument("--seed", type=int, default=0, help="random seed of the batch (default 0)")
    s.add_argument("--batch-size", type=int, default=4, help="batch size (default 4)")
    s.add_argument("--unknown-dim", type=int, default=8, help="size of unknown non-batch dimensions (default 8)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead")
    s.set_defaults(func=cmd_verify)


def _import_keras(flavor: str):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter is not our output
    if flavor == "tf_keras":
        import tf_keras

        return tf_keras
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"  # Keras 3 reads it once, at its first import
    import keras

    return keras


def _pick_keras(choice: str, keras_version: Optional[str], fmt: str) -> list:
    """The Keras flavors to try, in order."""
    if choice != "auto":
        return [choice]
    v3 = fmt == "keras" or (keras_version or "").startswith("3")
    return ["keras3", "tf_keras"] if v3 else ["tf_keras", "keras3"]


def _random_inputs(graph, seed: int, batch: int, unknown: int) -> list:
    """A seeded batch: normal floats, or valid token ids for an input that feeds an Embedding."""
    rng = np.random.default_rng(seed)
    vocab = _embedding_vocab(graph.keras_config)
    out = []
    for i, (shape, name) in enumerate(zip(graph.input_shapes, graph.input_dtypes)):
        dtype = torch_dtype(name if isinstance(name, str) else None)
        dims = [batch] + [unknown if d is None else int(d) for d in list(shape)[1:]]
        high = vocab.get(i)
        if high is not None or not dtype.is_floating_point:
            arr = rng.integers(0, high or 10, size=dims)
            out.append(torch.as_tensor(arr).to(dtype))
        else:
            out.append(torch.as_tensor(rng.standard_normal(dims).astype(np.float32)).to(dtype))
    return out


def _embedding_vocab(config: Optional[dict]) -> dict:
    """``{input index: smallest input_dim}`` of the Embedding layers an input feeds directly."""
    if not isinstance(config, dict):
        return {}
    cfg = config.get("config")
    layers = config_layers(config)
    if config.get("class_name") == "Sequential":
        first = layers[0] if layers else None
        if first and first.get("class_name") == "Embedding":
            return {0: int(first["config"]["input_dim"])}
        return {}
    inputs = [ref[0] for ref in (cfg or {}).get("input_layers", []) if isinstance(ref, list) and ref]
    if (cfg or {}).get("input_layers") and isinstance(cfg["input_layers"][0], str):
        inputs = [cfg["input_layers"][0]]
    out: dict = {}
    text_of = json.dumps
    for x in layers:
        if x.get("class_name") != "Embedding":
            continue
        inbound = text_of(x.get("inbound_nodes", []))
        for i, name in enumerate(inputs):
            if f'"{name}"' in inbound:
                dim = int(x["config"]["input_dim"])
                out[i] = min(out.get(i, dim), dim)
    return out


def _to_numpy(k, t) -> np.ndarray:
    if hasattr(k, "ops") and hasattr(k.ops, "convert_to_numpy"):
        return np.asarray(k.ops.convert_to_numpy(t))
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


def _node_outputs(layer) -> list:
    """The outputs of each call of ``layer`` (tf-keras ``get_output_at``, Keras 3 node attributes)."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    get = getattr(layer, "get_output_at", None)
    out = []
    for i in range(len(nodes)):
        try:
            out.append(get(i) if get is not None else layer._get_node_attribute_at_index(i, "output_tensors", "output"))
        except (AttributeError, ValueError, RuntimeError, IndexError):
            continue
    return out


def _keras_layer_outputs(k, kmodel, inputs: list) -> dict:
    """``{layer name: [numpy outputs]}`` of every layer's first call in the model, from one functional
    model that returns them all (Keras's own way to see inside a model)."""
    model_inputs = list(kmodel.inputs)
    chosen = []
    for layer in kmodel.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        with contextlib.suppress(AttributeError, ValueError, RuntimeError):
            chosen.append((layer.name, layer.output))
    try:
        probe = k.Model(model_inputs, [t for _, out in chosen for t in _as_list(out)])
    except Exception:  # noqa: BLE001 - Keras: "Graph disconnected" and kin, for shared and nested layers
        # node 0 of a shared or nested layer belongs to another graph: find the call in this one
        chosen = []
        for layer in kmodel.layers:
            if type(layer).__name__ == "InputLayer":
                continue
            for out in _node_outputs(layer):
                try:
                    k.Model(model_inputs, _as_list(out))
                except Exception:  # noqa: BLE001 - not connected to this model's inputs
                    continue
                chosen.append((layer.name, out))
                break
        if not chosen:
            return {}
        probe = k.Model(model_inputs, [t for _, out in chosen for t in _as_list(out)])
    values = probe(list(inputs), training=False)
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    result, i = {}, 0
    for name, out in chosen:
        n = len(_as_list(out))
        result[name] = [_to_numpy(k, v) for v in values[i : i + n]]
        i += n
    return result


def _as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _rel(a: np.ndarray, b: np.ndarray) -> tuple:
    """(max |a - b|, max |a - b| / max |b|) in float64; shapes must match."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0, 0.0
    err, scale = float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))
    return err, (err / scale if scale > 0 else (0.0 if err == 0 else float("inf")))


def cmd_verify(args) -> int:
    """``verify FILE``: per-layer output differences against Keras; exit 1 when outputs differ."""
    fmt = detect_format(args.file)
    model = tkio.load_model(args.file, compile=False)
    graph = model.module
    if not isinstance(graph, KerasGraph):
        raise UsageError(f"'{args.file}' holds a torch-side record (a registered torch module), not a Keras model: "
                         "there is no Keras model to verify against")  # fmt: skip
    inputs = _random_inputs(graph, args.seed, args.batch_size, args.unknown_dim)
    with torch.no_grad():
        t_final = model(*inputs)
        t_layers = graph.layer_outputs(*inputs)
    t_final = [t.numpy() for t in (t_final if isinstance(t_final, tuple) else (t_final,))]
    version = None
    if fmt.startswith("h5"):
        with LegacyH5Reader(args.file) as reader:
            version = reader.attributes().keras_version
    result = {"file": args.file, "keras": None, "seed": args.seed, "batch_size": args.batch_size,
              "rtol": args.rtol, "inputs": [list(x.shape) for x in inputs], "layers": [], "outputs": []}  # fmt: skip
    missing, failed = [], []
    k = kmodel = None
    for candidate in _pick_keras(args.keras, version, fmt):  # under auto: the other Keras when one cannot
        try:
            k = _import_keras(candidate)
        except ImportError as exc:
            missing.append(f"{candidate}: {exc}")
            continue
        try:
            kmodel = k.models.load_model(args.file, compile=False)
        except Exception as exc:  # noqa: BLE001 - whatever Keras raises, the verdict is that it could not load it
            failed.append(f"{candidate} could not load the file: {type(exc).__name__}: {one_line(exc)[:300]}")
            continue
        result["keras"] = candidate
        break
    if kmodel is None and not failed:
        if args.keras != "auto":
            raise UsageError(f"--keras {args.keras}: not importable ({'; '.join(missing)})")
        result["ok"] = True
        result["note"] = "no Keras installed: only loading and a forward pass in torchkeras_io were checked"
        _print_verify(result, args)
        return EXIT_OK
    if kmodel is None:
        result["ok"] = False
        result["note"] = "; ".join(failed)
        _print_verify(result, args)
        return EXIT_DIFFERENT
    feed = [x.numpy() for x in inputs]
    k_layers = _keras_layer_outputs(k, kmodel, feed)
    k_final = kmodel(feed if len(feed) > 1 else feed[0], training=False)
    k_final = [_to_numpy(k, v) for v in (k_final if isinstance(k_final, (list, tuple)) else [k_final])]
    for name, k_outs in k_layers.items():
        calls = sorted(node for layer, node in t_layers if layer == name)
        t_outs = t_layers[(name, calls[0])] if calls else None  # its first call, as on the Keras side
        row = {"layer": name, "shape": [list(x.shape) for x in k_outs]}
        if t_outs is None or len(t_outs) != len(k_outs):
            row["status"] = "not compared"
        elif any(tuple(t.shape) != tuple(x.shape) for t, x in zip(t_outs, k_outs) if isinstance(t, torch.Tensor)):
            row["status"] = "shape"
            row["torch_shape"] = [list(t.shape) for t in t_outs]
        else:
            diffs = [_rel(t.detach().numpy(), x) for t, x in zip(t_outs, k_outs) if isinstance(t, torch.Tensor)]
            row["max_abs"] = max((d[0] for d in diffs), default=0.0)
            row["max_rel"] = max((d[1] for d in diffs), default=0.0)
            row["status"] = "ok" if row["max_rel"] <= args.rtol else "DIFF"
        result["layers"].append(row)
    ok = len(t_final) == len(k_final)
    for i, (t, x) in enumerate(zip(t_final, k_final)):
        if t.shape != x.shape:
            result["outputs"].append({"output": i, "status": "shape", "torch_shape": list(t.shape),
                                      "keras_shape": list(x.shape)})  # fmt: skip
            ok = False
            continue
        err, rel = _rel(t, x)
        good = rel <= args.rtol
        ok = ok and good
        result["outputs"].append({"output": i, "shape": list(x.shape), "max_abs": err, "max_rel": rel,
                                  "status": "ok" if good else "DIFF"})  # fmt: skip
    result["ok"] = ok
    _print_verify(result, args)
    return EXIT_OK if ok else EXIT_DIFFERENT


def _print_verify(result: dict, args) -> None:
    if args.json:
        print(dumps(result))
        return
    print(f"file: {result['file']}")
    print(f"inputs: {', '.join(fmt_shape(s) for s in result['inputs'])} (seed {result['seed']})"
          + (f"; reference: {result['keras']}" if result["keras"] else ""))  # fmt: skip
    if result["layers"]:
        table = [("layer", "output shape", "max abs diff", "max rel diff", "status")]
        for r in result["layers"]:
            table.append((r["layer"], " ".join(fmt_shape(s) for s in r["shape"]),
                          f"{r['max_abs']:.3g}" if "max_abs" in r else "",
                          f"{r['max_rel']:.3g}" if "max_rel" in r else "", r["status"]))  # fmt: skip
        print_table(table)
    for o in result["outputs"]:
        if o["status"] == "shape":
            print(f"output {o['output']}: shape {fmt_shape(o['torch_shape'])} vs Keras {fmt_shape(o['keras_shape'])}")
        else:
            print(f"output {o['output']} {fmt_shape(o['shape'])}: max abs diff {o['max_abs']:.3g}, "
                  f"max rel diff {o['max_rel']:.3g} (rtol {result['rtol']:g}): {o['status']}")  # fmt: skip
    if result.get("note"):
        print(result["note"])
    print("VERIFIED" if result["ok"] else "FAILED")
