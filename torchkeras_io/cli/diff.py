"""``torchkeras-io diff A B``: the weights of two files compared layer by layer, without model code."""

from __future__ import annotations

import contextlib
import textwrap
from typing import Optional

import torch

from torchkeras_io._formats.keras3_store import EXTRAS
from torchkeras_io._formats.legacy_h5 import EXTRA_GROUP
from torchkeras_io._tensors import bits_equal
from torchkeras_io.cli.common import EXIT_DIFFERENT, EXIT_OK, dumps, fmt_shape, print_table
from torchkeras_io.cli.contents import Contents, Layer, read_contents, short_name

_EXTRA_PREFIXES = (f"{EXTRA_GROUP}/", f"{EXTRAS}/")  # torch-only state in legacy and Keras 3 files


def register(sub, epilog: str, formatter) -> None:
    s = sub.add_parser("diff", help="compare two weight files layer by layer",
                       description=textwrap.fill("Compare the weights of two files, matched by layer name and then by weight "
                       "name (by position where names differ, as in Keras 3 files). Reports weights only in A or "
                       "only in B, shape mismatches and the largest absolute and relative difference (relative to "
                       "max|B|). Exit 0 when every weight is within --atol + --rtol * max|B| (default: exactly "
                       "equal), 1 otherwise. Layers without weights (Input, Flatten) are skipped; torch-only state that "
                       "Keras has no slot for (num_batches_tracked) on one side only is listed but is no "
                       "difference.", 96), epilog=epilog, formatter_class=formatter)  # fmt: skip
    s.add_argument("a", metavar="A")
    s.add_argument("b", metavar="B")
    s.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    s.add_argument("--rtol", type=float, default=0.0, help="tolerance relative to max|B| per weight (default 0)")
    s.add_argument("--all", action="store_true", help="list identical weights too")
    s.add_argument("--json", action="store_true", help="print one JSON object instead")
    s.set_defaults(func=cmd_diff)


def cmd_diff(args) -> int:
    """``diff A B``: weights compared layer by layer; exit 1 when any differ beyond the tolerance."""
    rows = []
    counts = {"identical": 0, "close": 0, "different": 0, "shape": 0, "only_a": 0, "only_b": 0, "torch_only": 0}
    with contextlib.ExitStack() as stack:
        ca, cb = read_contents(args.a, stack), read_contents(args.b, stack)
        la, lb = _by_layer_name(ca), _by_layer_name(cb)
        for name in list(la) + [n for n in lb if n not in la]:
            if name not in lb or name not in la:  # a layer without weights (Flatten, Input) is no difference
                if (la.get(name) or lb.get(name)).weights:
                    rows.append({"layer": name, "weight": None, "status": "only_a" if name in la else "only_b"})
                continue
            pairs, only_a, only_b, torch_only = _pair_weights(la[name], lb[name])
            rows += [{"layer": name, "weight": w, "status": "only_a"} for w in only_a]
            rows += [{"layer": name, "weight": w, "status": "only_b"} for w in only_b]
            rows += [{"layer": name, "weight": w, "status": "torch_only"} for w in torch_only]
            rows += [_compare_row(name, wname, wa, wb, args) for wname, wa, wb in pairs]
    for r in rows:
        counts[r["status"]] += 1
    differs = counts["different"] + counts["shape"] + counts["only_a"] + counts["only_b"] > 0
    if args.json:
        print(dumps({"a": args.a, "b": args.b, "atol": args.atol, "rtol": args.rtol, "equal": not differs,
                     "counts": counts, "weights": rows}))  # fmt: skip
    else:
        _print_diff(rows, counts, differs, args)
    return EXIT_DIFFERENT if differs else EXIT_OK


def _compare_row(layer: str, wname: str, wa, wb, args) -> dict:
    row = {"layer": layer, "weight": wname, "shape_a": list(wa.shape), "shape_b": list(wb.shape),
           "dtype_a": wa.dtype, "dtype_b": wb.dtype}  # fmt: skip
    if tuple(wa.shape) != tuple(wb.shape):
        row["status"] = "shape"
        return row
    identical, max_abs, scale = _compare(wa.read(), wb.read())
    row["max_abs"] = max_abs
    row["max_rel"] = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    if identical:
        row["status"] = "identical"
    elif max_abs <= args.atol + args.rtol * scale:
        row["status"] = "close"
    else:
        row["status"] = "different"
    return row


def _print_diff(rows: list, counts: dict, differs: bool, args) -> None:
    shown = rows if args.all else [r for r in rows if r["status"] != "identical"]
    table = [("layer", "weight", "status", "max abs", "max rel", "detail")]
    for r in shown:
        detail = ""
        if r["status"] == "shape":
            detail = f"{fmt_shape(r['shape_a'])} vs {fmt_shape(r['shape_b'])}"
        elif r.get("dtype_a") and r["dtype_a"] != r["dtype_b"]:
            detail = f"dtype {r['dtype_a']} vs {r['dtype_b']}"
        status = {"only_a": "only in A", "only_b": "only in B", "torch_only": "torch-only state, one side"}.get(
            r["status"], r["status"]
        )
        table.append((r["layer"], r["weight"] or "(whole layer)", status,
                      f"{r['max_abs']:.3g}" if "max_abs" in r else "", f"{r['max_rel']:.3g}" if "max_rel" in r
                      else "", detail))  # fmt: skip
    if len(table) > 1:
        print_table(table)
    print(f"A: {args.a}\nB: {args.b}\n{counts['identical']} identical, {counts['close']} within tolerance, "
          f"{counts['different']} different, {counts['shape']} shape mismatches, {counts['only_a']} only in A, "
          f"{counts['only_b']} only in B" + (f", {counts['torch_only']} torch-only state on one side (not a "
          "difference)" if counts["torch_only"] else "") + (": DIFFERENT" if differs else ": SAME"))  # fmt: skip


def _torch_extra(name: str) -> Optional[str]:
    """The torch name of torch-only state (``num_batches_tracked``), else None."""
    for prefix in _EXTRA_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return None


def _pair_weights(la: Layer, lb: Layer) -> tuple:
    """Weights of two same-named layers: (pairs, only in A, only in B, torch-only state on one side).

    Keras weights pair by name, else by position (Keras 3 stores are unnamed); torch-only state
    pairs by its torch name."""
    ka = [w for w in la.weights if _torch_extra(w.name) is None]
    kb = [w for w in lb.weights if _torch_extra(w.name) is None]
    ea = {_torch_extra(w.name): w for w in la.weights if _torch_extra(w.name) is not None}
    eb = {_torch_extra(w.name): w for w in lb.weights if _torch_extra(w.name) is not None}
    extras = [(f"{EXTRA_GROUP}/{k}", ea[k], eb[k]) for k in ea if k in eb]
    one_side = [f"{EXTRA_GROUP}/{k}" for k in ea if k not in eb] + [f"{EXTRA_GROUP}/{k}" for k in eb if k not in ea]
    na = {short_name(w.name, la.name): w for w in ka}
    nb = {short_name(w.name, lb.name): w for w in kb}
    if set(na) == set(nb) and len(na) == len(ka) and len(nb) == len(kb):
        return [(k, na[k], nb[k]) for k in na] + extras, [], [], one_side
    if len(ka) == len(kb):
        pairs = []
        for wa, wb in zip(ka, kb):
            sa, sb = short_name(wa.name, la.name), short_name(wb.name, lb.name)
            pairs.append((sa if sa == sb else f"{sa}|{sb}", wa, wb))
        return pairs + extras, [], [], one_side
    common = [(k, na[k], nb[k]) for k in na if k in nb]
    return common + extras, [k for k in na if k not in nb], [k for k in nb if k not in na], one_side


def _by_layer_name(c: Contents) -> dict:
    """Layers by Keras name: a Keras 3 store's object paths (``layers/dense_1``) give way to the
    layers' own names (``head``) where those are recorded and unique, so it compares with legacy files."""
    own = [layer.keras_name for layer in c.layers]
    use_own = all(own) and len(set(own)) == len(own)
    return {(layer.keras_name if use_own else layer.name): layer for layer in c.layers}


def _compare(a: torch.Tensor, b: torch.Tensor) -> tuple:
    """(bit-identical, max |a - b|, max |b|) in float64."""
    identical = bits_equal(a, b)
    x, y = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if x.numel() == 0:
        return identical, 0.0, 0.0
    return identical, float((x - y).abs().max()), float(y.abs().max())
