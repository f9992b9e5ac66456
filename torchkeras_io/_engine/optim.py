"""Optimizer state and training config: torch.optim <-> Keras ``training_config`` / ``optimizer_weights``.

See shared/reference/optimizers.md for the mappings. Two records are written by ``save_model``:

* the Keras one (root attribute ``training_config`` and the ``/optimizer_weights`` group, in the
  tf-keras 2.11+ layout) that ``tf_keras.models.load_model`` compiles and restores;
* a torch-side one (group ``/torch_optimizer``: JSON attribute ``record`` plus one dataset per
  state tensor, stored in the Keras layout of its parameter) from which ``load_model`` rebuilds
  the torch optimizer and LR scheduler bit for bit.

``load_model`` uses the torch-side record when present, else converts the Keras state
(tf-keras 2.11+, optimizer_v2, Keras 3, Keras 2.0-2.3 layouts).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import re
import warnings
from typing import Optional

import h5py
import numpy as np
import torch
from torch import nn

from torchkeras_io import losses as _losses
from torchkeras_io import metrics as _metrics
from torchkeras_io._formats.legacy_h5 import load_attributes, save_attributes
from torchkeras_io._tensors import Lazy, from_numpy, to_numpy
from torchkeras_io.errors import FileFormatError, TorchKerasIOError, TorchKerasIOWarning, _h5_errors

TORCH_GROUP = "torch_optimizer"
OPT_GROUP = "optimizer_weights"

#: torch optimizer classes by name (never imported by name)
TORCH_OPTIMIZERS = {
    "SGD": torch.optim.SGD,
    "Adam": torch.optim.Adam,
    "AdamW": torch.optim.AdamW,
    "RMSprop": torch.optim.RMSprop,
    "Adagrad": torch.optim.Adagrad,
    "Adadelta": torch.optim.Adadelta,
    "Adamax": torch.optim.Adamax,
    "NAdam": torch.optim.NAdam,
}
_LRS = torch.optim.lr_scheduler
#: LR schedulers whose state_dict is plain data, with their constructor arguments
TORCH_SCHEDULERS = {
    "StepLR": (_LRS.StepLR, ("step_size", "gamma")),
    "MultiStepLR": (_LRS.MultiStepLR, ("milestones", "gamma")),
    "ExponentialLR": (_LRS.ExponentialLR, ("gamma",)),
    "CosineAnnealingLR": (_LRS.CosineAnnealingLR, ("T_max", "eta_min")),
    "LinearLR": (_LRS.LinearLR, ("start_factor", "end_factor", "total_iters")),
    "ConstantLR": (_LRS.ConstantLR, ("factor", "total_iters")),
    "PolynomialLR": (_LRS.PolynomialLR, ("total_iters", "power")),
}
#: Keras class name -> torch name
KERAS_TO_TORCH = {"SGD": "SGD", "Adam": "Adam", "AdamW": "AdamW", "RMSprop": "RMSprop", "Adagrad": "Adagrad",
                  "Adadelta": "Adadelta", "Adamax": "Adamax", "Nadam": "NAdam"}  # fmt: skip
_HYPER_KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "betas", "eps", "amsgrad", "alpha",
               "centered", "lr_decay", "initial_accumulator_value", "rho", "momentum_decay",
               "decoupled_weight_decay", "maximize", "initial_lr")  # fmt: skip


def _warn(msg: str, stacklevel: int = 4) -> None:
    warnings.warn(msg, TorchKerasIOWarning, stacklevel=stacklevel)


# ------------------------------------------------------------------------ param <-> Keras weight
def _root(lazy: Lazy):
    """The tensor a Keras weight is a pure view of, or None (computed from several tensors)."""
    origin = lazy._origin
    while origin is not None and origin[0] == "map":
        origin = origin[1]._origin
    if origin is None or origin[0] != "root" or not isinstance(origin[1], torch.Tensor):
        return None
    return origin[1] if lazy.strided() is not None else None


def _to_keras(lazy: Lazy, t: torch.Tensor) -> torch.Tensor:
    """``t`` (shaped as the weight's root) in the Keras layout: the weight's transforms replayed."""
    origin = lazy._origin
    if origin[0] == "root":
        return t
    return origin[2](_to_keras(origin[1], t))


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
            idx = _to_keras(lazy, torch.arange(n).reshape(root.shape))
            probe = torch.rand(tuple(root.shape), generator=torch.Generator().manual_seed(n), dtype=torch.float64)
            check = _to_keras(lazy, probe)
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
            ids = fn(*[_to_keras(p, torch.arange(r.numel()).reshape(r.shape) + offsets[id(r)])
                       for p, r in zip(parts, roots)])  # fmt: skip
            check = fn(*[_to_keras(p, probes[id(r)]) for p, r in zip(parts, roots)])
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


def _from_keras(parts: list, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_to_keras`: ``[(Lazy, tensor in its Keras layout)]`` (the Keras weights one
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


def _params_of(v) -> list:
    """The parameters a Keras variable's elements come from."""
    if v.param is not None:
        return [v.param]
    return [p for p, _, _ in v.sources or ()]


def param_parts(kvars: list) -> dict:
    """``{parameter: [KVar]}`` in first-appearance order (a parameter may be several Keras weights,
    and a Keras weight several parameters)."""
    out: dict = {}
    for v in kvars:
        for p in _params_of(v):
            out.setdefault(p, []).append(v)
    return out


def _param_key(param, parts: list) -> str:
    """The record's name for a parameter: its (first) Keras variable's, with ``#i`` for the i-th of
    several parameters one Keras variable is made of."""
    v = parts[0]
    if v.param is not None:
        return v.key
    return f"{v.key}#{[id(p) for p in _params_of(v)].index(id(param))}"


def _keras_of(v, of_param) -> torch.Tensor:
    """A per-parameter tensor (``of_param(parameter)``, shaped as the parameter) in ``v``'s Keras layout."""
    if v.param is not None:
        return _to_keras(v.lazy, of_param(v.param))
    out = None
    for p, kpos, pidx in v.sources:
        t = of_param(p)
        if out is None:
            out = torch.zeros(math.prod(v.lazy.shape), dtype=t.dtype)
        out[kpos] = t.reshape(-1)[pidx]
    return out.reshape(v.lazy.shape)


def _param_of_keras(param, parts: list, keras_of) -> torch.Tensor:
    """Inverse of :func:`_keras_of` for one parameter: ``keras_of(v)`` (each of its Keras variables'
    tensors, in Keras layout) written into a tensor shaped as the parameter."""
    like = param.detach().cpu()
    single = [(v.lazy, keras_of(v)) for v in parts if v.param is not None]
    out = _from_keras(single, like) if single else None
    for v in parts:
        if v.param is None:
            k = keras_of(v).reshape(-1)
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


# ----------------------------------------------------------------------------------- JSON helpers
def _jsonable(value):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, collections.Counter):
        return {"__counter__": [[k, v] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(type(value).__name__)


def _unjson(value):
    if isinstance(value, dict) and set(value) == {"__counter__"}:
        return collections.Counter({k: v for k, v in value["__counter__"]})
    return value


# ================================================================================= torch -> Keras
def _torch_name(optimizer) -> str:
    if isinstance(optimizer, str):
        raise TorchKerasIOError(
            f"the optimizer is only a name ({optimizer!r}): build it (e.g. train once) before saving"
        )
    for name, cls in TORCH_OPTIMIZERS.items():
        if type(optimizer) is cls:
            return name
    raise TorchKerasIOError(
        f"cannot save a {type(optimizer).__name__} optimizer; supported: {sorted(TORCH_OPTIMIZERS)}"
    )


def _float(x) -> float:
    return float(x.item() if isinstance(x, torch.Tensor) else x)


def keras_optimizer_config(name: str, group: dict) -> tuple:
    """(Keras class name, tf-keras 2.11+ config, notes on what is approximate)."""
    notes = []
    lr = _float(group["lr"])
    cfg = {"name": None, "weight_decay": None, "clipnorm": None, "global_clipnorm": None, "clipvalue": None,
           "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None, "jit_compile": False,
           "is_legacy_optimizer": False, "learning_rate": lr}  # fmt: skip
    wd = float(group.get("weight_decay", 0.0) or 0.0)
    decoupled = name == "AdamW" or bool(group.get("decoupled_weight_decay", False))
    if wd and not decoupled and not (name == "SGD" and not group.get("momentum")):
        notes.append(f"torch's coupled L2 weight_decay={wd} has no Keras optimizer counterpart (dropped)")
    elif wd:
        cfg["weight_decay"] = wd
    if group.get("maximize"):
        notes.append("maximize=True has no Keras counterpart")
    if name == "SGD":
        kname = "SGD"
        cfg.update(momentum=float(group["momentum"]), nesterov=bool(group["nesterov"]))
        if group.get("dampening"):
            notes.append(f"dampening={group['dampening']} has no Keras counterpart")
    elif name in ("Adam", "AdamW"):
        kname = "AdamW" if decoupled else "Adam"
        b1, b2 = group["betas"]
        cfg.update(beta_1=float(b1), beta_2=float(b2), epsilon=float(group["eps"]), amsgrad=bool(group["amsgrad"]))
        if group["eps"]:
            notes.append(
                "Adam epsilon: torch adds eps to sqrt(v/bc2), Keras to sqrt(v) (eps_torch = eps_keras/sqrt(bc2))"
            )
    elif name == "RMSprop":
        kname = "RMSprop"
        cfg.update(rho=float(group["alpha"]), momentum=float(group["momentum"]), epsilon=float(group["eps"]),
                   centered=bool(group["centered"]))  # fmt: skip
        if group["eps"]:
            notes.append("RMSprop epsilon: torch adds it outside the square root, Keras inside")
    elif name == "Adagrad":
        kname = "Adagrad"
        cfg.update(initial_accumulator_value=float(group["initial_accumulator_value"]), epsilon=float(group["eps"]))
        if group["eps"]:
            notes.append("Adagrad epsilon: torch adds it outside the square root, Keras 2.11+ inside")
        if group.get("lr_decay"):
            notes.append(f"Adagrad lr_decay={group['lr_decay']} is not representable as a float learning rate")
    elif name == "Adadelta":
        kname = "Adadelta"
        cfg.update(rho=float(group["rho"]), epsilon=float(group["eps"]))
    elif name == "Adamax":
        kname = "Adamax"
        b1, b2 = group["betas"]
        cfg.update(beta_1=float(b1), beta_2=float(b2), epsilon=float(group["eps"]))
        if group["eps"]:
            notes.append("Adamax epsilon: torch puts it inside the max, Keras adds it to the norm (u = exp_inf - eps)")
    elif name == "NAdam":
        kname = "Nadam"
        b1, b2 = group["betas"]
        cfg.update(beta_1=float(b1), beta_2=float(b2), epsilon=float(group["eps"]))
        if float(group["momentum_decay"]) != 1.0:
            notes.append(f"NAdam momentum_decay={group['momentum_decay']}: Keras 2.11+ Nadam uses 1.0")
    else:  # pragma: no cover
        raise TorchKerasIOError(f"no Keras counterpart for {name}")
    cfg["name"] = kname
    return kname, cfg, notes


def _keras_slots(name: str, group: dict, st: dict, shape_like: torch.Tensor) -> dict:
    """Keras slot tensors (torch layout) for one parameter from its torch state."""

    def get(key, default=0.0):
        v = st.get(key)
        return v.detach().cpu() if isinstance(v, torch.Tensor) else torch.full_like(shape_like, default)

    lr = _float(group["lr"])
    if name == "SGD":
        return {"m": -lr * get("momentum_buffer")}
    if name in ("Adam", "AdamW"):
        out = {"m": get("exp_avg"), "v": get("exp_avg_sq")}
        if group["amsgrad"]:
            out["vhat"] = get("max_exp_avg_sq")
        return out
    if name == "RMSprop":
        out = {"velocity": get("square_avg")}
        if group["momentum"]:
            out["momentum"] = lr * get("momentum_buffer")
        if group["centered"]:
            out["average_gradient"] = get("grad_avg")
        return out
    if name == "Adagrad":
        return {"accumulator": get("sum", float(group["initial_accumulator_value"]))}
    if name == "Adadelta":
        return {"accumulated_grad": get("square_avg"), "accumulated_delta_var": get("acc_delta")}
    if name == "Adamax":
        return {"m": get("exp_avg"), "u": (get("exp_inf") - float(group["eps"])).clamp_min(0)}
    if name == "NAdam":
        return {"m": get("exp_avg"), "v": get("exp_avg_sq")}
    raise AssertionError(name)  # pragma: no cover


#: tf-keras 2.11+ order of slots: (slot names, interleaved per variable?)
def _new_layout(kname: str, cfg: dict) -> list:
    """[(slot names interleaved per variable)] blocks, in tf-keras 2.11+ build order."""
    if kname == "SGD":
        return [["m"]]
    if kname in ("Adam", "AdamW"):
        return [["m", "v"]] + ([["vhat"]] if cfg.get("amsgrad") else [])
    if kname == "RMSprop":
        out = [["velocity"]]
        if cfg.get("momentum", 0) > 0:
            out.append(["momentum"])
        if cfg.get("centered"):
            out.append(["average_gradient"])
        return out
    if kname == "Adagrad":
        return [["accumulator"]]
    if kname == "Adadelta":
        return [["accumulated_grad", "accumulated_delta_var"]]
    if kname == "Adamax":
        return [["m", "u"]]
    if kname == "Nadam":
        return [["m", "v"]]
    raise AssertionError(kname)  # pragma: no cover


def _write_tensor(group: h5py.Group, path: str, t: torch.Tensor) -> None:
    array, marker = to_numpy(t.detach().cpu().contiguous())
    dset = group.create_dataset(path, data=np.asarray(array))
    if marker is not None:
        dset.attrs["torch_dtype"] = marker


def save_training(f: h5py.File, kvars: list, optimizer, loss, metrics, scheduler, include_optimizer: bool) -> None:
    """Write ``training_config``, ``/optimizer_weights`` and the torch-side record into ``f``."""
    if optimizer is None:
        if loss is not None or metrics:
            _warn("loss/metrics were given without an optimizer: Keras compiles only with one, so they are not saved")
        return
    name = _torch_name(optimizer)
    groups = optimizer.param_groups
    kname, cfg, notes = keras_optimizer_config(name, groups[0])
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in groups]
    if any(_jsonable(h) != _jsonable(hyper[0]) for h in hyper[1:]):
        notes.append("several param_groups with different hyper-parameters: Keras gets the first group's")
    if isinstance(loss, _losses.Loss):
        loss = loss.keras_config()
    elif loss is not None and not isinstance(loss, str):
        notes.append(f"loss {loss!r} is not a Keras loss name: not saved")
        loss = None
    if metrics:
        kept = [m for m in metrics if isinstance(m, str)]
        if len(kept) != len(metrics):
            notes.append("metrics that are not Keras names (strings) are not saved")
        metrics = kept
    training_config = {"loss": loss, "metrics": metrics, "weighted_metrics": None, "loss_weights": None,
                       "optimizer_config": {"class_name": f"Custom>{kname}", "config": cfg}}  # fmt: skip
    try:
        f.attrs["training_config"] = json.dumps(training_config).encode("utf-8")
    except TypeError as exc:
        raise TorchKerasIOError(f"loss and metrics must be Keras names (strings) or None: {exc}") from exc
    try:
        if include_optimizer:
            _save_state(f, kvars, optimizer, name, kname, cfg, scheduler, notes)
    finally:
        for note in notes:
            _warn(
                f"optimizer {name} -> Keras {kname}: {note}"
                + (
                    " (Keras side only: torchkeras_io.load_model restores the torch state exactly)"
                    if include_optimizer
                    else ""
                ),
                stacklevel=4,
            )


def _save_state(f: h5py.File, kvars: list, optimizer, name: str, kname: str, cfg: dict, scheduler, notes: list):
    groups = optimizer.param_groups
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in groups]
    by_param = {id(p): parts for p, parts in param_parts(kvars).items()}
    group_of = {}
    for gi, g in enumerate(groups):
        for p in g["params"]:
            group_of[id(p)] = gi
    missing = [i for i, g in enumerate(groups) for p in g["params"] if id(p) not in by_param]
    if missing:
        notes.append(f"{len(missing)} optimizer parameter(s) are not plain views of a Keras weight (or not in the "
                     "model): their state is not saved")  # fmt: skip
    state = optimizer.state
    steps = [_float(state[p]["step"]) for p in param_parts(kvars) if "step" in state.get(p, {})]
    if scheduler is not None and not steps:
        steps.append(int(scheduler.last_epoch))
    iteration = int(round(max(steps))) if steps else 0
    if steps and len(set(steps)) > 1:
        notes.append("parameters have different step counts: Keras iteration takes the largest")
    if scheduler is not None:
        notes.append("the LR scheduler is not converted for Keras: Keras gets the current learning rate as a constant")
    # ---- Keras layout
    og = f.create_group(OPT_GROUP)
    names, tensors = ["iteration:0"], [torch.tensor(iteration, dtype=torch.int64)]
    per_var = []
    for v in kvars:
        by_p = {}
        for p in _params_of(v) or [None]:
            gi = group_of.get(id(p)) if p is not None else None
            g = groups[gi] if gi is not None else groups[0]
            st = state.get(p, {}) if gi is not None else {}
            like = torch.zeros(v.lazy.shape) if p is None else torch.zeros(p.shape, dtype=p.dtype)
            by_p[id(p)] = _keras_slots(name, g, st, like)
        if v.param is None and not v.sources:
            slots = by_p[id(None)]
        else:
            slots = {k: _keras_of(v, lambda p, k=k: by_p[id(p)][k]) for k in next(iter(by_p.values()))}
        per_var.append({k: s.to(v.lazy.dtype) for k, s in slots.items()})
    for block in _new_layout(kname, cfg):
        for i, v in enumerate(kvars):
            for slot in block:
                names.append(f"{kname}/{slot}/{v.key}:0")
                tensors.append(per_var[i][slot])
    save_attributes(og, "weight_names", names)
    for n, t in zip(names, tensors):
        _write_tensor(og, n, t)
    # ---- torch-side record
    tg = f.create_group(TORCH_GROUP)
    keys = [[_param_key(p, by_param[id(p)]) if id(p) in by_param else None for p in g["params"]] for g in groups]
    rec_state = {}
    for param, parts in param_parts(kvars).items():
        if param not in state:
            continue
        entry, pkey = {}, _param_key(param, parts)
        for k, val in state[param].items():
            if isinstance(val, torch.Tensor):
                keras_layout = val.dim() > 0 and tuple(val.shape) == tuple(param.shape)
                # one dataset per Keras weight the parameter is split into; a parameter that is
                # part of a larger Keras weight (a GRU b_ih) keeps its own layout
                keras_layout = keras_layout and all(v.param is not None for v in parts)
                if keras_layout:
                    paths = [f"state/{v.key}/{k}" for v in parts]
                    for v, path in zip(parts, paths):
                        _write_tensor(tg, path, _to_keras(v.lazy, val.detach()))
                else:
                    paths = [f"state/{pkey}/{k}"]
                    _write_tensor(tg, paths[0], val.detach())
                entry[k] = {"datasets": paths, "keras_layout": keras_layout}
            else:
                entry[k] = {"value": _jsonable(val)}
        rec_state[pkey] = entry
    record = {"class_name": name, "param_groups": [dict(_jsonable(h), params=k) for h, k in zip(hyper, keys)],
              "state": rec_state}  # fmt: skip
    if scheduler is not None:
        sname = next((n for n, (cls, _) in TORCH_SCHEDULERS.items() if type(scheduler) is cls), None)
        try:
            if sname is None:
                raise TypeError(type(scheduler).__name__)
            record["scheduler"] = {"class_name": sname, "state": _jsonable(scheduler.state_dict())}
        except TypeError as exc:
            notes.append(f"LR scheduler {exc} is not saved (supported: {sorted(TORCH_SCHEDULERS)})")
    tg.attrs["record"] = json.dumps(record).encode("utf-8")


# ================================================================================= Keras -> torch
@dataclasses.dataclass
class Restored:
    optimizer: Optional[torch.optim.Optimizer]
    scheduler: object
    loss: object
    metrics: object


def _read_dataset(group: h5py.Group, path: str, filepath: str, max_numel: Optional[int] = None) -> torch.Tensor:
    """A numeric dataset as a tensor; ``max_numel`` (the largest weight's size) refuses shapes that
    no optimizer slot can have before anything is read (a file may claim terabytes)."""
    obj = group.get(path, getlink=True)
    if not isinstance(obj, h5py.HardLink):
        raise FileFormatError(f"optimizer dataset '{path}' is missing or not a hard link", filepath=filepath)
    dset = group[path]
    if not isinstance(dset, h5py.Dataset) or dset.dtype.kind not in "fiub" and dset.dtype.itemsize != 2:
        raise FileFormatError(f"optimizer entry '{path}' is not a numeric dataset", filepath=filepath)
    if dset.shape is None or (max_numel is not None and dset.size > max_numel):
        raise FileFormatError(f"optimizer dataset '{path}' has shape {dset.shape}, larger than any weight",
                              filepath=filepath)  # fmt: skip
    marker = dset.attrs.get("torch_dtype")
    marker = marker.decode() if isinstance(marker, bytes) else marker
    return from_numpy(np.asarray(dset[()]), marker)


def restore_training(f: h5py.File, filepath: str, training_config: Optional[str], kvars: list, device,
                     keras_version: Optional[str], module: Optional[nn.Module] = None) -> Restored:  # fmt: skip
    """The optimizer (and scheduler), loss and metrics stored in a full-model file."""
    try:
        tc = json.loads(training_config) if training_config else {}
    except ValueError as exc:
        raise FileFormatError(f"unreadable 'training_config': {exc}", filepath=filepath) from exc
    if not isinstance(tc, dict):
        raise FileFormatError(f"'training_config' is a {type(tc).__name__}, not an object", filepath=filepath)
    try:
        out = Restored(None, None, _losses.from_keras(tc.get("loss")), _metrics.from_keras(tc.get("metrics")))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # e.g. "metrics": 1
        raise FileFormatError(f"unreadable loss or metrics in 'training_config' ({type(exc).__name__}: {exc})",
                              filepath=filepath) from exc  # fmt: skip
    if TORCH_GROUP in f:
        out.optimizer, out.scheduler = _restore_torch_record(f[TORCH_GROUP], filepath, kvars, _others(module, kvars))
        return out
    oc = tc.get("optimizer_config")
    if isinstance(oc, dict):
        try:
            out.optimizer = _restore_keras(f, filepath, oc, kvars, _others(module, kvars), keras_version)
        except (TorchKerasIOError, KeyError, TypeError, ValueError, OSError, AttributeError, IndexError,
                RuntimeError) as exc:  # fmt: skip
            # as Keras does with optimizer state it cannot use: the model still loads
            _warn(f"{filepath}: the optimizer could not be restored ({exc}); model.optimizer is None", stacklevel=6)
    return out


def _others(module: Optional[nn.Module], kvars: list) -> list:
    """Trainable parameters of ``module`` that are no plain view of a Keras weight (e.g. b_ih, b_hh)."""
    if module is None:
        return []
    used = {id(p) for p in param_parts(kvars)}
    return [p for p in module.parameters() if p.requires_grad and id(p) not in used]


def _restore_torch_record(tg: h5py.Group, filepath: str, kvars: list, others: list):
    try:
        return _restore_torch_record_unchecked(tg, filepath, kvars, others)
    except TorchKerasIOError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        # a record this library wrote always has the structure read below; anything else is damage
        raise FileFormatError(f"unreadable torch optimizer record ({type(exc).__name__}: {exc})",
                              filepath=filepath) from exc  # fmt: skip


def _restore_torch_record_unchecked(tg: h5py.Group, filepath: str, kvars: list, others: list):
    try:
        record = json.loads(tg.attrs["record"])
        name = record["class_name"]
        cls = TORCH_OPTIMIZERS[name]
    except (KeyError, ValueError, TypeError) as exc:
        raise FileFormatError(f"unreadable torch optimizer record: {exc}", filepath=filepath) from exc
    parts_of = param_parts(kvars)
    by_key = {_param_key(p, parts): p for p, parts in parts_of.items()}
    groups, flat, dropped = [], [], 0
    # trainable parameters the record does not name: they take the places of the record's unnamed
    # ones once ``others`` run out (a torch LSTM's b_ih / b_hh pair is one Keras-built b_ih)
    named = {k for g in record["param_groups"] for k in g["params"] if k is not None}
    spare = [p for p, parts in parts_of.items() if p.requires_grad and _param_key(p, parts) not in named]
    for g in record["param_groups"]:
        params = []
        for key in g["params"]:
            if key is None:  # a parameter that was not a plain view of a Keras weight: the next such one
                dropped += 1
                pool = others if others else spare
                if pool:
                    params.append(pool.pop(0))
                    flat.append(None)
                continue
            if key not in by_key:
                raise TorchKerasIOError(f"the optimizer record names parameter '{key}', which the model lacks",
                                        filepath=filepath)  # fmt: skip
            params.append(by_key[key])
            flat.append(key)
        groups.append(params)
    opt = cls([{"params": ps} for ps in groups], lr=record["param_groups"][0]["lr"])
    scheduler = None
    if "scheduler" in record:
        sname = record["scheduler"]["class_name"]
        scls, args = TORCH_SCHEDULERS[sname]
        sstate = {k: _unjson(v) for k, v in record["scheduler"]["state"].items()}
        for g in opt.param_groups:
            g.setdefault("initial_lr", g["lr"])
        scheduler = scls(opt, **{a: sstate[a] for a in args})
    sd_groups, i = [], 0
    for g in record["param_groups"]:
        hyper = {k: v for k, v in g.items() if k != "params"}
        if "betas" in hyper:
            hyper["betas"] = tuple(hyper["betas"])
        n = len(groups[len(sd_groups)])
        sd_groups.append(dict(hyper, params=list(range(i, i + n))))
        i += n
    sd_state = {}
    limit = max((v.lazy.numel() for v in kvars), default=1)
    for idx, key in enumerate(flat):
        entry = record["state"].get(key) if key is not None else None
        if entry is None:
            continue
        param = by_key[key]
        parts = parts_of[param]
        st = {}
        for k, item in entry.items():
            if "value" in item:
                st[k] = item["value"]
                continue
            paths = item["datasets"]
            tensors = [_read_dataset(tg, path, filepath, limit) for path in paths]
            if item.get("keras_layout"):
                if len(paths) != len(parts):
                    raise FileFormatError(f"state '{k}' of '{key}' has {len(paths)} parts, the model "
                                          f"{len(parts)}", filepath=filepath)  # fmt: skip
                t = _from_keras([(p.lazy, x) for p, x in zip(parts, tensors)], param.detach().cpu())
            else:
                t = tensors[0]
                if t.dim() and tuple(t.shape) != tuple(param.shape):
                    raise FileFormatError(f"state '{k}' of '{key}' has shape {tuple(t.shape)}, the parameter "
                                          f"{tuple(param.shape)}", filepath=filepath)  # fmt: skip
            st[k] = t.to(param.device) if k != "step" else t
        sd_state[idx] = st
    opt.load_state_dict({"state": sd_state, "param_groups": sd_groups})
    if dropped:
        _warn(f"{filepath}: {dropped} optimizer parameter(s) of the saved {name} had no Keras weight of their own "
              "whose state is not restored (they restart fresh)", stacklevel=7)  # fmt: skip
    if scheduler is not None:
        scheduler.load_state_dict(sstate)
    return opt, scheduler


def _generation(names: list, shapes: list, cfg: dict, keras_version: Optional[str]) -> str:
    first = names[0].rsplit("/", 1)[-1] if names else ""
    if any(n.endswith("learning_rate") or n.endswith("learning_rate:0") for n in names[:2]) or (
        keras_version or ""
    ).startswith("3"):
        return "k3"
    if first.startswith("iteration") and not first.startswith("iterations"):
        return "new"
    if cfg.get("is_legacy_optimizer") is False:
        return "new"
    if first.startswith("iter:") or first == "iter":
        return "v2"
    return "k2"


def _v2_blocks(kname: str, cfg: dict, gen: str) -> list:
    """Slot-major blocks of optimizer_v2 (and Keras 2.0-2.3), canonical slot names."""
    if kname == "SGD":
        return [["m"]] if gen == "k2" or cfg.get("momentum", 0) > 0 else []
    if kname == "Adam":
        return [["m"], ["v"]] + ([["vhat"]] if cfg.get("amsgrad") or gen == "k2" else [])
    if kname == "RMSprop":
        return ([["velocity"]] + ([["momentum"]] if cfg.get("momentum", 0) > 0 else [])
                + ([["average_gradient"]] if cfg.get("centered") else []))  # fmt: skip
    if kname == "Adagrad":
        return [["accumulator"]]
    if kname == "Adadelta":
        return [["accumulated_grad"], ["accumulated_delta_var"]]
    if kname in ("Adamax", "Nadam"):
        return [["m"], ["u" if kname == "Adamax" else "v"]]
    raise AssertionError(kname)  # pragma: no cover


def _restore_keras(f: h5py.File, filepath: str, oc: dict, kvars: list, others: list, keras_version):
    kname = str(oc.get("class_name", "")).removeprefix("Custom>")
    cfg = dict(oc.get("config") or {})
    if kname not in KERAS_TO_TORCH:
        _warn(
            f"{filepath}: Keras optimizer '{kname}' has no torch.optim counterpart; model.optimizer is left None",
            stacklevel=7,
        )
        return None
    if kname == "Adam" and cfg.get("weight_decay"):
        kname = "AdamW"
    tname = KERAS_TO_TORCH[kname]
    notes = []
    names, values = [], []
    if OPT_GROUP in f:
        og = f[OPT_GROUP]
        names = load_attributes(og, "weight_names", filepath) or []
        limit = max((v.lazy.numel() for v in kvars), default=1)
        values = [_read_dataset(og, n, filepath, limit) for n in names]
    gen = _generation(names, [tuple(v.shape) for v in values], cfg, keras_version)
    # ---- hyper-parameters
    lr = cfg.get("learning_rate", cfg.get("lr", 0.001))
    if isinstance(lr, dict):
        inner = lr.get("config", {})
        lr = float(inner.get("initial_learning_rate", inner.get("learning_rate", 0.001)))
        notes.append(f"learning-rate schedule {lr_name(cfg)} is not converted: torch gets its initial value {lr}")
    lr = float(lr)
    if gen in ("v2", "k2") and cfg.get("decay"):
        if kname != "Nadam":
            notes.append(f"time-based decay={cfg['decay']} is not converted (use LambdaLR(lambda k: 1/(1+d*k)))")
    for k in ("clipnorm", "clipvalue", "global_clipnorm"):
        if cfg.get(k):
            notes.append(f"{k}={cfg[k]} is a training-loop call in torch (clip_grad_*), not applied")
    if cfg.get("use_ema"):
        notes.append("use_ema: the EMA copies are not part of a torch optimizer")
    eps = float(cfg.get("epsilon", 1e-7) if cfg.get("epsilon") is not None else 1e-7)
    if gen == "v2" and not eps:
        eps = 1e-7  # optimizer_v2 turns epsilon=0 into 1e-7
    wd = float(cfg.get("weight_decay") or 0.0)
    b1, b2 = float(cfg.get("beta_1", 0.9)), float(cfg.get("beta_2", 0.999))
    if wd and kname not in ("AdamW", "Nadam") and not (kname == "SGD" and not cfg.get("momentum")):
        notes.append(f"Keras decoupled weight_decay={wd} has no torch {tname} option (dropped)")
    if tname == "SGD":
        mom = float(cfg.get("momentum", 0.0))
        kw = dict(lr=lr, momentum=mom, nesterov=bool(cfg.get("nesterov", False)) and mom > 0,
                  weight_decay=wd if not cfg.get("momentum") else 0.0)  # fmt: skip
    elif tname in ("Adam", "AdamW"):
        kw = dict(lr=lr, betas=(b1, b2), eps=eps, amsgrad=bool(cfg.get("amsgrad", False)))
        if tname == "AdamW":
            kw["weight_decay"] = wd
        if eps:
            notes.append(f"Adam epsilon={eps}: Keras adds it to sqrt(v), torch to sqrt(v/(1-beta_2^t)) — "
                         "slight drift where sqrt(v) is comparable to epsilon")  # fmt: skip
    elif tname == "RMSprop":
        mom = float(cfg.get("momentum", 0.0))
        kw = dict(lr=lr, alpha=float(cfg.get("rho", 0.9)), eps=eps, momentum=mom, centered=bool(cfg.get("centered")))
        if eps and not (gen in ("v2", "k2") and mom == 0):
            notes.append(f"RMSprop epsilon={eps}: Keras adds it inside the square root, torch outside")
    elif tname == "Adagrad":
        kw = dict(lr=lr, eps=eps, initial_accumulator_value=float(cfg.get("initial_accumulator_value", 0.1)))
        if eps and gen in ("new", "k3"):
            notes.append(f"Adagrad epsilon={eps}: Keras adds it inside the square root, torch outside")
    elif tname == "Adadelta":
        kw = dict(lr=lr, rho=float(cfg.get("rho", 0.95)), eps=eps)
    elif tname == "Adamax":
        kw = dict(lr=lr, betas=(b1, b2), eps=eps)
        if eps:
            notes.append(f"Adamax epsilon={eps}: torch puts it inside the max, Keras adds it to the norm")
    else:  # NAdam
        psi = 1.0 if gen in ("new", "k3") else 0.004
        kw = dict(lr=lr, betas=(b1, b2), eps=eps, momentum_decay=psi)
        if wd:
            kw.update(weight_decay=wd, decoupled_weight_decay=True)
    params = list(param_parts(kvars))
    if others:
        notes.append(f"{len(others)} parameter(s) have no Keras variable of their own (e.g. a recurrent b_ih/b_hh "
                     "pair is one Keras bias): they start with fresh optimizer state")  # fmt: skip
    opt = TORCH_OPTIMIZERS[tname](params + others, **kw)
    # ---- state
    n = len(kvars)
    if names:
        slots, iteration = _split_slots(kname if kname != "AdamW" else "Adam", cfg, gen, names, values, n, notes)
        if slots is not None and gen == "k2":
            slots = _keras2_order(kvars, slots, keras_version, bool(kw.get("amsgrad")), notes)
        if slots is not None and iteration is None and kname in ("RMSprop", "Adagrad", "Adadelta"):
            iteration = 0  # their updates do not use the step: the accumulators carry over as they are
            slots_ok = True
        else:
            slots_ok = slots is not None and bool(iteration)
            if slots is not None and not slots_ok:
                notes.append(f"iteration count {iteration}: optimizer state not restored, it restarts from zero")
        if slots_ok:
            if any(v.param is None and not v.sources for v in kvars):
                notes.append("some Keras variables map to no single torch parameter; their state is dropped")
            _set_state(opt, tname, kw, kvars, slots, iteration, notes)
    for note in notes:
        _warn(f"{filepath}: Keras {kname} -> torch {tname}: {note}", stacklevel=7)  # the load_model caller
    return opt


def _sorts_by_name(keras_version: Optional[str]) -> bool:
    """Keras 1.x and 2.0.0-2.0.5 handed the optimizer the model's trainable weights sorted by
    their names (``training.py`` ``compile``: "sort them deterministically"); 2.0.6 and later in
    topological (layer) order, each layer's own weights in its order."""
    m = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", keras_version or "1")
    if m is None:
        return False
    version = tuple(int(x or 0) for x in m.groups())
    return version < (2, 0, 6)


def _keras2_order(kvars: list, per_var: list, keras_version: Optional[str], amsgrad: bool, notes: list):
    """Slots of a Keras <= 2.3 file (``per_var``: one dict per variable in the order Keras built
    them) reordered to ``kvars`` (layer order), following the rule of the file's Keras version.

    When the version's order contradicts the slot shapes the other known order is used if it fits
    them; when neither does, shapes decide if every variable's shape is distinct; else None (the
    state is not restored). Same-shaped slots are only ever assigned by an order rule."""
    n = len(kvars)
    used = [k for k in (per_var[0] if per_var else {}) if k != "vhat" or amsgrad]  # vhat: (1,) placeholders

    def fits(assigned) -> bool:
        return all(tuple(a[k].shape) == tuple(v.lazy.shape) for a, v in zip(assigned, kvars) for k in used)

    def assign(order) -> list:
        out = [None] * n
        for pos, i in enumerate(order):
            out[i] = per_var[pos]
        return out

    layers = list(range(n))
    stored = [v.stored for v in kvars]
    by_name = sorted(layers, key=lambda i: stored[i]) if all(s is not None for s in stored) else None
    rule = "sorted by weight name" if _sorts_by_name(keras_version) else "layer order"
    candidates = [("sorted by weight name", by_name), ("layer order", layers)]
    if rule == "layer order":
        candidates.reverse()
    for label, order in candidates:
        if order is None:
            continue
        assigned = assign(order)
        if fits(assigned):
            if label != rule:
                notes.append(f"the optimizer slots are in {label}, not in the {rule} of Keras {keras_version}: "
                             f"assigned in {label}, which their shapes fit")  # fmt: skip
            return assigned
    shapes = [tuple(v.lazy.shape) for v in kvars]
    if used and len(set(shapes)) == n:
        where = {shape: i for i, shape in enumerate(shapes)}
        order = [where.get(tuple(slot[used[0]].shape)) for slot in per_var]
        if None not in order and len(set(order)) == n:
            assigned = assign(order)
            if fits(assigned):
                notes.append(f"the optimizer slots follow no known Keras {keras_version} order: assigned by their "
                             "shapes, which are all distinct")  # fmt: skip
                return assigned
    notes.append(f"the optimizer slots fit neither the {rule} of Keras {keras_version} nor any other known order "
                 "of the model's trainable weights: optimizer state not restored, it restarts from zero")  # fmt: skip
    return None


def lr_name(cfg: dict) -> str:
    lr = cfg.get("learning_rate")
    return str(lr.get("class_name")) if isinstance(lr, dict) else "?"


def _split_slots(kname, cfg, gen, names, values, n, notes):
    """([{slot: tensor (Keras layout)} per variable], iteration) or (None, 0) when the layout is not recognised."""
    vals = list(values)
    iteration = None  # None: the file has no counter (Keras <= 2.2 RMSprop, Adagrad, Adadelta)
    if vals and vals[0].dim() == 0 and vals[0].dtype in (torch.int32, torch.int64, torch.float32, torch.float64):
        iteration = int(vals.pop(0).item())
    elif gen == "k2" and kname in ("SGD", "Adam", "Adamax", "Nadam"):
        notes.append("no iterations counter in the file")
    if gen == "k3":
        if vals and vals[0].dim() == 0 and len(names) > 1 and "learning_rate" in names[1]:
            vals.pop(0)
        if kname == "Nadam" and vals and vals[-1].dim() == 0:
            vals.pop()
    if gen == "v2" and kname == "Nadam" and vals and vals[0].dim() == 0:
        vals.pop(0)  # momentum_cache: recomputed from the step
    if gen in ("new", "k3"):
        blocks = _new_layout(kname, cfg)
        if gen == "k3" and kname == "SGD" and not cfg.get("momentum"):
            blocks = []
    else:
        blocks = _v2_blocks(kname, cfg, gen)
        if gen == "k2" and kname == "Adam" and len(vals) == 2 * n:
            blocks = blocks[:2]  # Keras < 2.1.3: no vhat placeholders
    expected = sum(len(b) for b in blocks) * n
    if len(vals) != expected:
        notes.append(f"{len(vals)} optimizer slot variables in the file, {expected} expected for {n} trainable "
                     f"variables ({gen} layout): optimizer state not restored")  # fmt: skip
        return None, iteration
    per_var = [{} for _ in range(n)]
    it = iter(vals)
    for block in blocks:
        interleaved = len(block) > 1 and gen in ("new", "k3")
        if interleaved:
            for i in range(n):
                for s in block:
                    per_var[i][s] = next(it)
        else:
            for s in block:
                for i in range(n):
                    per_var[i][s] = next(it)
    return per_var, iteration


def _nadam_mu_product(t: int, b1: float, psi: float) -> float:
    prod = 1.0
    for i in range(1, t + 1):
        prod *= b1 * (1.0 - 0.5 * 0.96 ** (i * psi))
    return prod


def _set_state(opt, tname, kw, kvars, slots, iteration, notes):
    lr = kw["lr"]
    state = {}
    index = {id(v): i for i, v in enumerate(kvars)}
    for idx, (param, parts) in enumerate(param_parts(kvars).items()):

        def slot(v, s):
            t = slots[index[id(v)]][s]
            if tuple(t.shape) != tuple(v.lazy.shape):
                raise FileFormatError(f"optimizer slot '{s}' of '{v.key}' has shape {tuple(t.shape)}, the "
                                      f"weight {v.lazy.shape}")  # fmt: skip
            return t.to(param.dtype)

        def get(s, parts=parts, param=param):
            return _param_of_keras(param, parts, lambda v: slot(v, s)).to(param.device)

        step = torch.tensor(float(iteration), dtype=torch.float32)
        if tname == "SGD":
            if not kw["momentum"]:
                continue
            st = {"momentum_buffer": get("m") / -lr}
        elif tname in ("Adam", "AdamW"):
            st = {"step": step, "exp_avg": get("m"), "exp_avg_sq": get("v")}
            if kw["amsgrad"]:
                st["max_exp_avg_sq"] = get("vhat")
        elif tname == "RMSprop":
            st = {"step": step, "square_avg": get("velocity")}
            if kw["momentum"]:
                st["momentum_buffer"] = get("momentum") / lr
            if kw["centered"]:
                st["grad_avg"] = get("average_gradient")
        elif tname == "Adagrad":
            st = {"step": step, "sum": get("accumulator")}
        elif tname == "Adadelta":
            st = {"step": step, "square_avg": get("accumulated_grad"), "acc_delta": get("accumulated_delta_var")}
        elif tname == "Adamax":
            st = {"step": step, "exp_avg": get("m"), "exp_inf": get("u") + kw["eps"]}
        else:
            mu = _nadam_mu_product(iteration, kw["betas"][0], kw["momentum_decay"])
            st = {"step": step, "exp_avg": get("m"), "exp_avg_sq": get("v"), "mu_product": torch.tensor(mu)}
        state[idx] = st
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


__all__ = ["KVar", "Restored", "keras_variables", "restore_training", "save_training"]


def restore_for_model(module: nn.Module, filepath: str, training_config: Optional[str], layer_names, device,
                      keras_version: Optional[str]) -> Restored:  # fmt: skip
    """:func:`restore_training` for a module loaded from ``filepath`` (Keras layer order from the file)."""
    from torchkeras_io._engine.plan import plan
    from torchkeras_io._formats.legacy_h5 import WeightsReader

    slots, top = plan(module, layer_names)
    stored = {}  # id(Lazy) -> the weight's name in the file (Keras <= 2.0.5 sorted the optimizer's by it)
    with _h5_errors(filepath), WeightsReader(filepath) as reader:
        order = {name: i for i, name in enumerate(reader.layer_names)}
        for s in slots:
            if s.name in order:
                found = reader.layer(s.name).weights
                # the file's weights pair with the layer's by position (as load_weights reads them)
                # unless a layout changed on the way (Keras 1 per-gate or Theano kernels): then none
                if [tuple(w.shape) for w in found] == [tuple(w.shape) for w in s.layer.weights]:
                    stored.update((id(w), x.name) for w, x in zip(s.layer.weights, found))
    slots = sorted(slots, key=lambda s: order.get(s.name, len(order)))
    layers = [(s.name, s.layer.weights) for s in slots]
    if top is not None:
        layers.append((top.name, top.layer.weights))
    with _h5_errors(filepath), h5py.File(filepath, "r") as f:
        kvars = keras_variables(layers, frozen_too=TORCH_GROUP in f)
        for v in kvars:
            v.stored = stored.get(id(v.lazy))
        return restore_training(f, filepath, training_config, kvars, device, keras_version, module)
