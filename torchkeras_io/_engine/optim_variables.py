"""Torch parameters <-> Keras trainable variables, for optimizer state.

A Keras weight is a lazy view of torch parameters (:mod:`torchkeras_io._tensors`): the same
tensor transposed, a slice of one, or a rearrangement of several (a GRU's gates). Optimizers are
element-wise, so a weight's optimizer slots map onto its parameters' state through the same
transforms; :func:`keras_variables` lists the model's variables in Keras's order with those maps.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import nn

from torchkeras_io._tensors import Lazy
from torchkeras_io.errors import TorchKerasIOError


def _root(lazy: Lazy):
    """The tensor a Keras weight is a pure view of, or None (computed from several tensors)."""
    origin = lazy._origin
    while origin is not None and origin[0] == "map":
        origin = origin[1]._origin
    if origin is None or origin[0] != "root" or not isinstance(origin[1], torch.Tensor):
        return None
    return origin[1] if lazy.strided() is not None else None


def to_keras(lazy: Lazy, t: torch.Tensor) -> torch.Tensor:
    """``t`` (shaped as the weight's root) in the Keras layout: the weight's transforms replayed."""
    origin = lazy._origin
    if origin[0] == "root":
        return t
    return origin[2](to_keras(origin[1], t))


def _chain_root(lazy: Lazy):
    """The tensor at the root of a weight's chain of transforms, or None (computed otherwise)."""
    origin = lazy._origin
    while origin is not None and origin[0] == "map":
        origin = origin[1]._origin
    return origin[1] if origin is not None and origin[0] == "root" else None


def _gather_index(lazy: Lazy, root: torch.Tensor) -> Optional[torch.Tensor]:
    """Flat indices into ``root`` of the weight's elements (shaped as the weight) when its
    transforms only move elements around (e.g. a GRU gate reorder: slices and a concatenation),
    else None. Optimizers are element-wise, so such a weight's slots map onto the parameter's
    state through the same indices. A random probe proves the transforms ignore the values."""
    n = root.numel()
    try:
        with torch.no_grad():
            idx = to_keras(lazy, torch.arange(n).reshape(root.shape))
            probe = torch.rand(tuple(root.shape), generator=torch.Generator().manual_seed(n), dtype=torch.float64)
            check = to_keras(lazy, probe)
    except Exception:  # noqa: BLE001 - a transform that cannot run on a stand-in is no gather
        return None
    if not isinstance(idx, torch.Tensor) or idx.dtype != torch.int64 or tuple(idx.shape) != tuple(lazy.shape):
        return None
    if not isinstance(check, torch.Tensor) or not torch.equal(check, probe.reshape(-1)[idx]):
        return None
    return idx if idx.unique().numel() == idx.numel() else None


def _gather_sources(lazy: Lazy) -> Optional[list]:
    """``[(parameter, Keras flat positions, parameter flat indices)]`` for a weight computed from
    several parameters only by moving their elements (its reader exposes ``parts`` and ``fn``, as
    the GRU bias ``stack([b_ih, b_hh])`` does), else None."""
    parts, fn = getattr(lazy._read, "parts", None), getattr(lazy._read, "fn", None)
    if not parts or fn is None:
        return None
    roots = [_chain_root(p) for p in parts]
    if not all(isinstance(r, nn.Parameter) for r in roots):
        return None
    params, offsets, total = [], {}, 0
    for r in roots:
        if id(r) not in offsets:
            offsets[id(r)] = total
            params.append(r)
            total += r.numel()
    gen = torch.Generator().manual_seed(total)
    probes = {id(r): torch.rand(tuple(r.shape), generator=gen, dtype=torch.float64) for r in params}
    try:
        with torch.no_grad():
            ids = fn(*[to_keras(p, torch.arange(r.numel()).reshape(r.shape) + offsets[id(r)])
                       for p, r in zip(parts, roots)])  # fmt: skip
            check = fn(*[to_keras(p, probes[id(r)]) for p, r in zip(parts, roots)])
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(ids, torch.Tensor) or ids.dtype != torch.int64 or tuple(ids.shape) != tuple(lazy.shape):
        return None
    flat = ids.reshape(-1)
    every = torch.cat([probes[id(r)].reshape(-1) for r in params])
    if not torch.equal(check.reshape(-1), every[flat]) or flat.unique().numel() != flat.numel():
        return None
    out = []
    for r in params:
        kpos = ((flat >= offsets[id(r)]) & (flat < offsets[id(r)] + r.numel())).nonzero().reshape(-1)
        if kpos.numel():
            out.append((r, kpos, flat[kpos] - offsets[id(r)]))
    return out


def from_keras(parts: list, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_keras`: ``[(Lazy, tensor in its Keras layout)]`` (the Keras weights one
    parameter is split into, usually one) written through their views into a tensor like the parameter."""
    out = torch.zeros(like.shape, dtype=parts[0][1].dtype)
    for lazy, k in parts:
        view = lazy.strided()
        if view is not None and like.stride() == out.stride():
            out.as_strided(view.shape, view.stride, view.offset).copy_(k.reshape(view.shape))
            continue
        idx = _gather_index(lazy, like)
        if idx is None:
            raise TorchKerasIOError(f"weight '{lazy.name}' is not a rearrangement of its parameter")
        out.view(-1)[idx.reshape(-1)] = k.reshape(-1).to(out.dtype)
    return out


def params_of(v) -> list:
    """The parameters a Keras variable's elements come from."""
    if v.param is not None:
        return [v.param]
    return [p for p, _, _ in v.sources or ()]


def param_parts(kvars: list) -> dict:
    """``{parameter: [KVar]}`` in first-appearance order (a parameter may be several Keras weights,
    and a Keras weight several parameters)."""
    out: dict = {}
    for v in kvars:
        for p in params_of(v):
            out.setdefault(p, []).append(v)
    return out


def param_key(param, parts: list) -> str:
    """The record's name for a parameter: its (first) Keras variable's, with ``#i`` for the i-th of
    several parameters one Keras variable is made of."""
    v = parts[0]
    if v.param is not None:
        return v.key
    return f"{v.key}#{[id(p) for p in params_of(v)].index(id(param))}"


def keras_of(v, of_param) -> torch.Tensor:
    """A per-parameter tensor (``of_param(parameter)``, shaped as the parameter) in ``v``'s Keras layout."""
    if v.param is not None:
        return to_keras(v.lazy, of_param(v.param))
    out = None
    for p, kpos, pidx in v.sources:
        t = of_param(p)
        if out is None:
            out = torch.zeros(math.prod(v.lazy.shape), dtype=t.dtype)
        out[kpos] = t.reshape(-1)[pidx]
    return out.reshape(v.lazy.shape)


def param_of_keras(param, parts: list, of_var) -> torch.Tensor:
    """Inverse of :func:`keras_of` for one parameter: ``of_var(v)`` (each of its Keras variables'
    tensors, in Keras layout) written into a tensor shaped as the parameter."""
    like = param.detach().cpu()
    single = [(v.lazy, of_var(v)) for v in parts if v.param is not None]
    out = from_keras(single, like) if single else None
    for v in parts:
        if v.param is None:
            k = of_var(v).reshape(-1)
            if out is None:
                out = torch.zeros(like.shape, dtype=k.dtype)
            for p, kpos, pidx in v.sources:
                if p is param:
                    out.view(-1)[pidx] = k[kpos].to(out.dtype)
    return out


@dataclasses.dataclass
class KVar:
    """One Keras trainable variable: its name (``layer/weight``), lazy view, and torch parameter.

    ``param`` is the parameter whose elements the weight is (a view or a rearrangement of it),
    ``sources`` ``[(parameter, Keras flat positions, parameter flat indices)]`` when it is made of
    several parameters, and ``stored`` the weight's name in the file being read."""

    key: str
    lazy: Lazy
    param: Optional[nn.Parameter]
    sources: Optional[list] = None
    stored: Optional[str] = None


def keras_variables(layers, frozen_too: bool = True) -> list:
    """Keras ``model.trainable_variables`` order from ``[(layer name, [Lazy])]`` in model layer order.

    ``frozen_too=False`` leaves out parameters with ``requires_grad=False`` (layers Keras marked
    ``trainable: false`` are built frozen)."""
    out = []
    for name, weights in layers:
        for lazy in weights:
            raw = _chain_root(lazy)
            if isinstance(raw, nn.Parameter) and (frozen_too or raw.requires_grad):
                root = _root(lazy)
                mapped = root is raw or _gather_index(lazy, raw) is not None
                out.append(KVar(f"{name}/{lazy.name}", lazy, raw if mapped else None))
            elif lazy._origin is None and not lazy.name.endswith(("moving_mean", "moving_variance")):
                sources = _gather_sources(lazy)
                if sources and not frozen_too and not any(p.requires_grad for p, _, _ in sources):
                    continue
                # else computed from several parameters (e.g. a recurrent bias b_ih + b_hh): a
                # Keras variable whose optimizer state has no torch counterpart
                out.append(KVar(f"{name}/{lazy.name}", lazy, None, sources))
    return out
