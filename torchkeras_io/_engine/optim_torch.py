"""Our exact-resume record of a torch optimizer and LR scheduler, beside Keras's own state.

Keras's optimizer state loses what Keras has no place for (torch's hyper-parameters, parameters
that are no Keras weight, the scheduler); this record keeps all of it: the optimizer's
``state_dict`` as JSON, each state tensor stored in the Keras layout of its parameter (one tensor
per Keras weight the parameter is split into), named by the parameter's Keras variable.
"""

from __future__ import annotations

import collections
import json
import warnings

import torch

from torchkeras_io._checkpoint.training import TorchOptimizerRecord, tensor_of
from torchkeras_io._engine.optim_variables import from_keras, param_key, param_parts, to_keras
from torchkeras_io._engine.training_config import TORCH_OPTIMIZERS, TORCH_SCHEDULERS
from torchkeras_io.errors import FileFormatError, TorchKerasIOError, TorchKerasIOWarning


def jsonable(value):
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, collections.Counter):
        return {"__counter__": [[k, v] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(type(value).__name__)


def _unjson(value):
    if isinstance(value, dict) and set(value) == {"__counter__"}:
        return collections.Counter({k: v for k, v in value["__counter__"]})
    return value


def torch_record(kvars: list, optimizer, name: str, hyper: list, by_param: dict, scheduler,
                  notes: list) -> TorchOptimizerRecord:  # fmt: skip
    """Our exact-resume record: each state tensor in the Keras layout of its parameter, where it
    has one (one tensor per Keras weight the parameter is split into)."""
    groups, state = optimizer.param_groups, optimizer.state
    keys = [[param_key(p, by_param[id(p)]) if id(p) in by_param else None for p in g["params"]] for g in groups]
    rec_state, tensors = {}, {}
    for param, parts in param_parts(kvars).items():
        if param not in state:
            continue
        entry, pkey = {}, param_key(param, parts)
        for k, val in state[param].items():
            if isinstance(val, torch.Tensor):
                keras_layout = val.dim() > 0 and tuple(val.shape) == tuple(param.shape)
                # a parameter that is part of a larger Keras weight (a GRU b_ih) keeps its own layout
                keras_layout = keras_layout and all(v.param is not None for v in parts)
                if keras_layout:
                    paths = [f"state/{v.key}/{k}" for v in parts]
                    for v, path in zip(parts, paths):
                        tensors[path] = to_keras(v.lazy, val.detach())
                else:
                    paths = [f"state/{pkey}/{k}"]
                    tensors[paths[0]] = val.detach()
                entry[k] = {"datasets": paths, "keras_layout": keras_layout}
            else:
                entry[k] = {"value": jsonable(val)}
        rec_state[pkey] = entry
    record = {"class_name": name, "param_groups": [dict(jsonable(h), params=k) for h, k in zip(hyper, keys)],
              "state": rec_state}  # fmt: skip
    if scheduler is not None:
        sname = next((n for n, (cls, _) in TORCH_SCHEDULERS.items() if type(scheduler) is cls), None)
        try:
            if sname is None:
                raise TypeError(type(scheduler).__name__)
            record["scheduler"] = {"class_name": sname, "state": jsonable(scheduler.state_dict())}
        except TypeError as exc:
            notes.append(f"LR scheduler {exc} is not saved (supported: {sorted(TORCH_SCHEDULERS)})")
    return TorchOptimizerRecord(json.dumps(record), tensors)


def restore_torch_record(rec: TorchOptimizerRecord, filepath: str, kvars: list, others: list):
    try:
        return _restore_torch_record_unchecked(rec, filepath, kvars, others)
    except TorchKerasIOError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        # a record this library wrote always has the structure read below; anything else is damage
        raise FileFormatError(f"unreadable torch optimizer record ({type(exc).__name__}: {exc})",
                              filepath=filepath) from exc  # fmt: skip


def _restore_torch_record_unchecked(rec: TorchOptimizerRecord, filepath: str, kvars: list, others: list):
    try:
        if rec.record is None:
            raise KeyError("record")
        record = json.loads(rec.record)
        name = record["class_name"]
        cls = TORCH_OPTIMIZERS[name]
    except (KeyError, ValueError, TypeError) as exc:
        raise FileFormatError(f"unreadable torch optimizer record: {exc}", filepath=filepath) from exc
    parts_of = param_parts(kvars)
    by_key = {param_key(p, parts): p for p, parts in parts_of.items()}
    groups, flat, dropped = [], [], 0
    # trainable parameters the record does not name: they take the places of the record's unnamed
    # ones once ``others`` run out (a torch LSTM's b_ih / b_hh pair is one Keras-built b_ih)
    named = {k for g in record["param_groups"] for k in g["params"] if k is not None}
    spare = [p for p, parts in parts_of.items() if p.requires_grad and param_key(p, parts) not in named]
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
            tensors = [tensor_of(rec.tensors[path], limit) for path in paths]
            if item.get("keras_layout"):
                if len(paths) != len(parts):
                    raise FileFormatError(f"state '{k}' of '{key}' has {len(paths)} parts, the model "
                                          f"{len(parts)}", filepath=filepath)  # fmt: skip
                t = from_keras([(p.lazy, x) for p, x in zip(parts, tensors)], param.detach().cpu())
            else:
                t = tensors[0]
                if t.dim() and tuple(t.shape) != tuple(param.shape):
                    raise FileFormatError(f"state '{k}' of '{key}' has shape {tuple(t.shape)}, the parameter "
                                          f"{tuple(param.shape)}", filepath=filepath)  # fmt: skip
            st[k] = t.to(param.device) if k != "step" else t
        sd_state[idx] = st
    opt.load_state_dict({"state": sd_state, "param_groups": sd_groups})
    if dropped:
        warnings.warn(f"{filepath}: {dropped} optimizer parameter(s) of the saved {name} had no Keras weight of "
                      "their own whose state is not restored (they restart fresh)", TorchKerasIOWarning,
                      stacklevel=6)  # fmt: skip
    if scheduler is not None:
        scheduler.load_state_dict(sstate)
    return opt, scheduler
