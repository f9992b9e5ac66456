"""Optimizer state: torch.optim (with its LR scheduler, loss and metrics) <-> :class:`TrainingRecord`.

For the load and save pipelines (``_engine/model_io.py``), two entry points:

* :func:`training_record` ``(layers, optimizer, loss, metrics, scheduler, include_optimizer=,
  dialect=)``: the record to write, or None (no optimizer); ``layers`` are ``[(Keras layer name,
  [Lazy weight])]`` in the file's layer order. Write it with
  :func:`torchkeras_io._checkpoint.training.write_training`; for a ``.keras`` archive its
  ``config`` is ``config.json``'s ``compile_config``.
* :func:`restore_training` ``(record, layers, module=, keras_version=, filepath=,
  stored_names=)``: the :class:`Restored` optimizer, scheduler, loss and metrics of a record
  read by :func:`~torchkeras_io._checkpoint.training.read_h5_training` or
  :func:`~torchkeras_io._checkpoint.training.read_keras3_training` (a reader's ``training()``).

A saved record holds two optimizer states (docs/optimizers.md lists the optimizers):

* the Keras one (tf-keras 2.11+ layout, or Keras 3's), that Keras compiles and resumes from;
* a torch-side one (:mod:`.optim_torch`: JSON text plus one tensor per state tensor, in the
  Keras layout of its parameter) from which :func:`restore_training` rebuilds the torch
  optimizer and LR scheduler bit for bit.

Restoring uses the torch-side record when present, else converts the Keras state (tf-keras 2.11+,
optimizer_v2, Keras 3, Keras 2.0-2.3 layouts: :mod:`.training_config`). Parameters <-> Keras
variables: :mod:`.optim_variables`.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from typing import Optional

import torch
from torch import nn

from torchkeras_io._checkpoint.training import (
    KERAS3,
    TF_KERAS,
    OptimizerVariable,
    TrainingRecord,
    tensor_of,
)
from torchkeras_io._engine.optim_torch import jsonable, restore_torch_record, torch_record
from torchkeras_io._engine.optim_variables import (
    keras_of,
    keras_variables,
    param_of_keras,
    param_parts,
    params_of,
)
from torchkeras_io._engine.training_config import (
    KERAS_TO_TORCH,
    TORCH_OPTIMIZERS,
    compile_config,
    float_of,
    generation,
    keras2_order,
    keras_optimizer_config,
    keras_training_config,
    loss_and_metrics,
    nadam_mu_product,
    new_layout,
    split_slots,
    torch_name,
    torch_optimizer_kwargs,
    training_config_of,
)
from torchkeras_io._keras.keras3 import keras_snake
from torchkeras_io.errors import FileFormatError, TorchKerasIOError, TorchKerasIOWarning


def _warn(msg: str, stacklevel: int = 4) -> None:
    warnings.warn(msg, TorchKerasIOWarning, stacklevel=stacklevel)


# --------------------------------------------------------------------- torch state -> Keras slots
def _keras_slots(name: str, group: dict, st: dict, shape_like: torch.Tensor) -> dict:
    """Keras slot tensors (torch layout) for one parameter from its torch state."""

    def get(key, default=0.0):
        v = st.get(key)
        return v.detach().cpu() if isinstance(v, torch.Tensor) else torch.full_like(shape_like, default)

    lr = float_of(group["lr"])
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


# ================================================================================= torch -> Keras
def training_record(layers, optimizer, loss=None, metrics=None, scheduler=None, *, include_optimizer: bool = True,
                    dialect: str = TF_KERAS) -> Optional[TrainingRecord]:  # fmt: skip
    """The training state to save with a model whose Keras layers are ``layers`` (``[(name,
    [Lazy])]``, in the file's order): Keras's training (``dialect`` TF_KERAS) or compile
    (KERAS3) config, and with ``include_optimizer`` the Keras optimizer's variables and the
    torch-side record. None without an optimizer (Keras compiles only with one)."""
    if optimizer is None:
        if loss is not None or metrics:
            _warn("loss/metrics were given without an optimizer: Keras compiles only with one, so they are not saved")
        return None
    name = torch_name(optimizer)
    groups = optimizer.param_groups
    kname, cfg, notes = keras_optimizer_config(name, groups[0])
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in groups]
    if any(jsonable(h) != jsonable(hyper[0]) for h in hyper[1:]):
        notes.append("several param_groups with different hyper-parameters: Keras gets the first group's")
    try:
        # what the file will hold: JSON's, and Keras's, view of it
        training = json.loads(json.dumps(keras_training_config(loss, metrics, kname, cfg, notes)))
    except TypeError as exc:
        raise TorchKerasIOError(f"loss and metrics must be Keras names (strings) or None: {exc}") from exc
    record = TrainingRecord(dialect, training if dialect == TF_KERAS else compile_config(training))
    try:
        if include_optimizer:
            _save_state(record, keras_variables(layers), optimizer, name, kname, cfg, scheduler, notes)
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
    return record


def _save_state(record: TrainingRecord, kvars: list, optimizer, name: str, kname: str, cfg: dict, scheduler,
                notes: list) -> None:  # fmt: skip
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
    steps = [float_of(state[p]["step"]) for p in param_parts(kvars) if "step" in state.get(p, {})]
    if scheduler is not None and not steps:
        steps.append(int(scheduler.last_epoch))
    iteration = int(round(max(steps))) if steps else 0
    if steps and len(set(steps)) > 1:
        notes.append("parameters have different step counts: Keras iteration takes the largest")
    if scheduler is not None:
        notes.append("the LR scheduler is not converted for Keras: Keras gets the current learning rate as a constant")
    # ---- Keras layout
    per_var = []
    for v in kvars:
        by_p = {}
        for p in params_of(v) or [None]:
            gi = group_of.get(id(p)) if p is not None else None
            g = groups[gi] if gi is not None else groups[0]
            st = state.get(p, {}) if gi is not None else {}
            like = torch.zeros(v.lazy.shape) if p is None else torch.zeros(p.shape, dtype=p.dtype)
            by_p[id(p)] = _keras_slots(name, g, st, like)
        if v.param is None and not v.sources:
            slots = by_p[id(None)]
        else:
            slots = {k: keras_of(v, lambda p, k=k: by_p[id(p)][k]) for k in next(iter(by_p.values()))}
        per_var.append({k: s.to(v.lazy.dtype) for k, s in slots.items()})
    slots = [(slot, v.key, per_var[i][slot]) for block in new_layout(kname, cfg) for i, v in enumerate(kvars)
             for slot in block]  # fmt: skip
    record.variables = _optimizer_variables(record.dialect, kname, cfg, iteration, slots, optimizer)
    record.torch = torch_record(kvars, optimizer, name, hyper, by_param, scheduler, notes)


def _optimizer_variables(dialect: str, kname: str, cfg: dict, iteration: int, slots: list, optimizer) -> list:
    """The Keras optimizer's variables, as the dialect names and orders them: tf-keras 2.11+'s
    ``iteration:0`` and ``<Optimizer>/<slot>/<layer>/<weight>:0``; Keras 3's numbered
    ``iteration``, ``learning_rate``, the slots in the same order, and for Nadam its trailing
    ``u_product`` (torch's ``mu_product``)."""
    step = torch.tensor(iteration, dtype=torch.int64)
    if dialect == TF_KERAS:
        return [OptimizerVariable("iteration:0", step)] + [
            OptimizerVariable(f"{kname}/{slot}/{key}:0", t) for slot, key, t in slots
        ]
    lr = cfg.get("learning_rate")
    if isinstance(lr, dict) or lr is None:
        return []
    values = [step, torch.tensor(lr, dtype=torch.float32)] + [t for _, _, t in slots]
    if isinstance(optimizer, torch.optim.NAdam):
        products = [float(st["mu_product"]) for st in optimizer.state.values() if "mu_product" in st]
        values.append(torch.tensor(products[0] if products else 1.0, dtype=torch.float32))
    prefix = keras_snake(kname)
    names = [f"{prefix}/iteration", f"{prefix}/learning_rate"] + [f"{prefix}/slot_{i}" for i in range(2, len(values))]
    return [OptimizerVariable(n, t) for n, t in zip(names, values)]


# ================================================================================= Keras -> torch
@dataclasses.dataclass
class Restored:
    optimizer: Optional[torch.optim.Optimizer]
    scheduler: object
    loss: object
    metrics: object


def restore_training(record: TrainingRecord, layers, *, module: Optional[nn.Module] = None,
                     keras_version: Optional[str] = None, filepath: str = "",
                     stored_names: Optional[dict] = None) -> Restored:  # fmt: skip
    """The optimizer (and scheduler), loss and metrics of ``record``, for the model whose Keras
    layers are ``layers`` (``[(name, [Lazy])]`` in the file's layer order) and whose parameters
    are ``module``'s. ``stored_names`` ``{id(Lazy): the weight's name in the file}``: Keras 1.x and
    2.0.0-2.0.5 handed their optimizer the weights sorted by these names."""
    # layers Keras marked ``trainable: false`` are built frozen; our own record counts them
    kvars = keras_variables(layers, frozen_too=record.torch is not None)
    for v in kvars:
        v.stored = (stored_names or {}).get(id(v.lazy))
    tc = record.config or {}
    if record.dialect == KERAS3:
        tc = training_config_of(tc)
    out = Restored(None, None, *loss_and_metrics(tc, filepath))
    if record.torch is not None:
        out.optimizer, out.scheduler = restore_torch_record(record.torch, filepath, kvars, _others(module, kvars))
        return out
    oc = tc.get("optimizer_config")
    if isinstance(oc, dict):
        try:
            out.optimizer = _restore_keras(record, filepath, oc, kvars, _others(module, kvars), keras_version)
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


def _restore_keras(record: TrainingRecord, filepath: str, oc: dict, kvars: list, others: list, keras_version):
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
    if record.variables_error is not None:
        raise record.variables_error
    names = [v.name for v in record.variables]
    limit = max((v.lazy.numel() for v in kvars), default=1)
    values = [tensor_of(v.value, limit) for v in record.variables]
    gen = generation(names, [tuple(v.shape) for v in values], cfg, keras_version)
    kw = torch_optimizer_kwargs(kname, tname, cfg, gen, notes)
    params = list(param_parts(kvars))
    if others:
        notes.append(f"{len(others)} parameter(s) have no Keras variable of their own (e.g. a recurrent b_ih/b_hh "
                     "pair is one Keras bias): they start with fresh optimizer state")  # fmt: skip
    opt = TORCH_OPTIMIZERS[tname](params + others, **kw)
    # ---- state
    n = len(kvars)
    if names:
        slots, iteration = split_slots(kname if kname != "AdamW" else "Adam", cfg, gen, names, values, n, notes)
        if slots is not None and gen == "k2":
            slots = keras2_order(kvars, slots, keras_version, bool(kw.get("amsgrad")), notes)
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
            return param_of_keras(param, parts, lambda v: slot(v, s)).to(param.device)

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
            mu = nadam_mu_product(iteration, kw["betas"][0], kw["momentum_decay"])
            st = {"step": step, "exp_avg": get("m"), "exp_avg_sq": get("v"), "mu_product": torch.tensor(mu)}
        state[idx] = st
    sd = opt.state_dict()
    sd["state"] = state
    opt.load_state_dict(sd)


__all__ = ["Restored", "restore_training", "training_record"]
