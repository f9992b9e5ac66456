"""Keras optimizer configs and slot layouts, by Keras generation; loss, metric and compile configs.

The optimizers are listed in docs/optimizers.md. The generations a file's optimizer state
comes in (:func:`generation`): ``"new"`` tf-keras 2.11+ (var-major blocks named
``Adam/m/dense/kernel:0``), ``"k3"`` Keras 3 (the same order after ``iteration`` and
``learning_rate``), ``"v2"`` optimizer_v2 (tf-keras 2.0-2.10, slot-major) and ``"k2"`` Keras
2.0-2.3 (slot-major, in the order the model's weights were handed to the optimizer).
"""

from __future__ import annotations

import re
from typing import Optional

import torch

from torchkeras_io import losses as _losses
from torchkeras_io import metrics as _metrics
from torchkeras_io._keras.keras3 import keras_snake
from torchkeras_io.errors import FileFormatError, TorchKerasIOError

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


def torch_name(optimizer) -> str:
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


def float_of(x) -> float:
    return float(x.item() if isinstance(x, torch.Tensor) else x)


def keras_optimizer_config(name: str, group: dict) -> tuple:
    """(Keras class name, tf-keras 2.11+ config, notes on what is approximate)."""
    notes = []
    lr = float_of(group["lr"])
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


#: tf-keras 2.11+ order of slots: (slot names, interleaved per variable?)
def new_layout(kname: str, cfg: dict) -> list:
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


def generation(names: list, shapes: list, cfg: dict, keras_version: Optional[str]) -> str:
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


def _sorts_by_name(keras_version: Optional[str]) -> bool:
    """Keras 1.x and 2.0.0-2.0.5 handed the optimizer the model's trainable weights sorted by
    their names (``training.py`` ``compile``: "sort them deterministically"); 2.0.6 and later in
    topological (layer) order, each layer's own weights in its order."""
    m = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", keras_version or "1")
    if m is None:
        return False
    version = tuple(int(x or 0) for x in m.groups())
    return version < (2, 0, 6)


def keras2_order(kvars: list, per_var: list, keras_version: Optional[str], amsgrad: bool, notes: list):
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


def _lr_name(cfg: dict) -> str:
    lr = cfg.get("learning_rate")
    return str(lr.get("class_name")) if isinstance(lr, dict) else "?"


def split_slots(kname, cfg, gen, names, values, n, notes):
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
        blocks = new_layout(kname, cfg)
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


def nadam_mu_product(t: int, b1: float, psi: float) -> float:
    prod = 1.0
    for i in range(1, t + 1):
        prod *= b1 * (1.0 - 0.5 * 0.96 ** (i * psi))
    return prod


def torch_optimizer_kwargs(kname: str, tname: str, cfg: dict, gen: str, notes: list) -> dict:
    """The torch optimizer's constructor arguments from Keras optimizer ``kname``'s ``cfg`` (of
    generation ``gen``); what does not carry over goes into ``notes``."""
    lr = cfg.get("learning_rate", cfg.get("lr", 0.001))
    if isinstance(lr, dict):
        inner = lr.get("config", {})
        lr = float(inner.get("initial_learning_rate", inner.get("learning_rate", 0.001)))
        notes.append(f"learning-rate schedule {_lr_name(cfg)} is not converted: torch gets its initial value {lr}")
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
    return kw


def keras_training_config(loss, metrics, kname: str, cfg: dict, notes: list) -> dict:
    """tf-keras's ``training_config``: Keras names for ``loss`` and ``metrics`` (others are noted
    and left out), the optimizer as ``Custom>`` its class (tf-keras 2.11+ resolves it so)."""
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
    return {"loss": loss, "metrics": metrics, "weighted_metrics": None, "loss_weights": None,
            "optimizer_config": {"class_name": f"Custom>{kname}", "config": cfg}}  # fmt: skip


def compile_config(training: dict) -> dict:
    """Keras 3's ``compile_config`` from the tf-keras ``training_config`` above."""
    oc = training.get("optimizer_config") or {}
    kname = str(oc.get("class_name", "")).removeprefix("Custom>")
    cfg = {k: v for k, v in (oc.get("config") or {}).items() if k not in ("jit_compile", "is_legacy_optimizer")}
    cfg["name"] = keras_snake(kname)
    return {
        "optimizer": {"module": "keras.optimizers", "class_name": kname, "config": cfg, "registered_name": None},
        "loss": training.get("loss"),
        "loss_weights": None,
        "metrics": training.get("metrics"),
        "weighted_metrics": None,
        "run_eagerly": False,
        "steps_per_execution": 1,
        "jit_compile": False,
    }


def training_config_of(compile_cfg: dict) -> dict:
    """What tf-keras's ``training_config`` would hold of Keras 3's ``compile_config``."""
    opt = compile_cfg.get("optimizer")
    oc = {k: opt.get(k) for k in ("class_name", "config")} if isinstance(opt, dict) else None
    return {"loss": compile_cfg.get("loss"), "metrics": compile_cfg.get("metrics"), "optimizer_config": oc}


def loss_and_metrics(tc: dict, filepath: str) -> tuple:
    """(loss, metrics) of a ``training_config`` as :mod:`torchkeras_io.losses` / ``.metrics`` objects."""
    try:
        return _losses.from_keras(tc.get("loss")), _metrics.from_keras(tc.get("metrics"))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # e.g. "metrics": 1
        raise FileFormatError(f"unreadable loss or metrics in 'training_config' ({type(exc).__name__}: {exc})",
                              filepath=filepath) from exc  # fmt: skip
