"""Keras checkpoints from distributed jobs: DistributedDataParallel and FSDP2 (``fully_shard``).

Saving gathers the full (unsharded) state with ``torch.distributed.checkpoint.state_dict`` onto
rank 0, which alone writes the file through the ordinary save path; loading reads the file on rank
0 and broadcasts it (``broadcast_from_rank0``), so every rank ends with the same bits. Each
function is a collective: every rank of the default process group must call it. Without an
initialised process group they are the plain :func:`~torchkeras_io.save_weights` and friends.

Rank 0's success or failure is broadcast to the others, so an error there (a bad file, a full
disk) raises on every rank instead of leaving them waiting forever.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import json
import os
from typing import Any, Callable, Union

import torch
import torch.distributed as dist
from torch import nn

from torchkeras_io import errors
from torchkeras_io.errors import TorchKerasIOError
from torchkeras_io.saving import save_model
from torchkeras_io.training import Model
from torchkeras_io.weights import LoadReport, Mismatch, load_weights, save_weights

PathLike = Union[str, os.PathLike]


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside ``tkio.Model``, DDP / DataParallel and ``torch.compile`` wrappers.

    Its module paths are the Keras layer names, so a checkpoint of a wrapped module is named as
    the unwrapped one (``0``, ``features.3``; never ``module.0``). FSDP2 (``fully_shard``) keeps
    the module tree as it is; FSDP1 wrappers are refused (use ``fully_shard``).
    """
    while True:
        if isinstance(module, (Model, nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif type(module).__name__ == "FullyShardedDataParallel":
            raise TorchKerasIOError(
                "FullyShardedDataParallel (FSDP1) is not supported: its wrappers rename the module tree; "
                "shard with torch.distributed.fsdp.fully_shard (FSDP2) instead"
            )
        elif hasattr(module, "_orig_mod") and type(module).__name__ == "OptimizedModule":
            module = module._orig_mod
        else:
            return module


def _sharded(module: nn.Module) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch < 2.4 has no FSDP2
        return False
    return any(isinstance(t, DTensor) for t in itertools.chain(module.parameters(), module.buffers()))


def _full_state(module: nn.Module) -> dict:
    """The full, CPU state dict on rank 0 (empty elsewhere); a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


_HOOKS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs")


@contextlib.contextmanager
def _swapped(module: nn.Module, state: dict):
    """Temporarily give ``module`` the tensors of ``state`` (keyed by its own module paths).

    Sharded parameters (DTensors) are replaced by the gathered full tensors so that the
    single-process save and load paths see an ordinary module; the originals come back after.
    Tied tensors stay tied. Forward hooks are set aside too: FSDP's all-gather in them would
    make the export's trial forward a collective that the other ranks never join.
    """
    saved, by_id = [], {}
    try:
        for prefix, owner in module.named_modules(remove_duplicate=False):
            for kind in _HOOKS:
                saved.append((owner.__dict__, kind, getattr(owner, kind)))
                setattr(owner, kind, collections.OrderedDict())
            for kind in ("_parameters", "_buffers"):
                table = getattr(owner, kind)
                for name, orig in list(table.items()):
                    if orig is None:
                        continue
                    fqn = f"{prefix}.{name}" if prefix else name
                    new = by_id.get(id(orig))
                    if new is None:
                        full = state.get(fqn)
                        if full is None:
                            if kind == "_parameters":
                                raise TorchKerasIOError(f"the gathered state has no tensor for parameter '{fqn}'")
                            continue  # a non-persistent buffer: not part of the checkpoint
                        new = nn.Parameter(full, requires_grad=orig.requires_grad) if kind == "_parameters" else full
                        by_id[id(orig)] = new
                    saved.append((table, name, orig))
                    table[name] = new
        yield module
    finally:
        for table, name, orig in reversed(saved):
            table[name] = orig


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _broadcast_json(obj: Any) -> Any:
    """Rank 0's JSON-able ``obj`` on every rank (as bytes: no pickling)."""
    device = _comm_device()
    data = json.dumps(obj).encode("utf-8") if dist.get_rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src=0)
    buf = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return json.loads(buf.cpu().numpy().tobytes().decode("utf-8"))


def _on_rank0(fn: Callable[[], Any], filepath: PathLike) -> Any:
    """Run ``fn`` on rank 0 only and share its outcome: its JSON-able result, or its error on every rank."""
    outcome = None
    if dist.get_rank() == 0:
        try:
            outcome = {"ok": True, "result": fn()}
        except BaseException as exc:
            info = {"ok": False, "type": type(exc).__name__, "message": str(exc)}
            if isinstance(exc, TorchKerasIOError):
                info.update(message=exc.message, layer=exc.layer, weight=exc.weight)
            _broadcast_json(info)
            raise
    shared = _broadcast_json(outcome)
    if not shared["ok"]:
        cls = getattr(errors, shared["type"], None)
        if not (isinstance(cls, type) and issubclass(cls, TorchKerasIOError)):
            cls, shared["message"] = TorchKerasIOError, f"{shared['type']}: {shared['message']}"
        context = {"filepath": filepath, "layer": shared.get("layer"), "weight": shared.get("weight")}
        try:
            error = cls(f"on rank 0: {shared['message']}", **context)
        except TypeError:  # a subclass with its own signature: the base class says the same
            error = TorchKerasIOError(f"on rank 0: {shared['type']}: {shared['message']}", **context)
        raise error
    return shared["result"]


def save_weights_distributed(
    module: nn.Module, filepath: PathLike, *, overwrite: bool = True, layer_names=None
) -> None:
    """:func:`~torchkeras_io.save_weights` from a DDP / FSDP2 job: gathered, written once by rank 0.

    A collective: every rank calls it and returns once the file is complete (or raises on every
    rank when rank 0 could not write it). Layer names are those of the unwrapped module.
    """
    inner = unwrap(module)
    if not _distributed():
        save_weights(inner, filepath, overwrite=overwrite, layer_names=layer_names)
        return
    state = _full_state(inner)

    def write() -> None:
        with _swapped(inner, state):
            save_weights(inner, filepath, overwrite=overwrite, layer_names=layer_names)

    _on_rank0(write, filepath)


def save_model_distributed(module: nn.Module, filepath: PathLike, **kwargs: Any) -> None:
    """:func:`~torchkeras_io.save_model` from a DDP / FSDP2 job, written by rank 0.

    Keyword arguments are those of ``save_model``. A DDP replica is written as it is, with the
    ``optimizer`` state if one is given (every rank holds the same); an FSDP2 module's state is
    gathered first, and its sharded optimizer state is not written (``optimizer`` must be None).
    A collective, like :func:`save_weights_distributed`.
    """
    inner = unwrap(module)
    if not _distributed():
        save_model(inner, filepath, **kwargs)
        return
    if not _sharded(inner):

        def write() -> None:
            save_model(inner, filepath, **kwargs)

    else:
        if kwargs.get("optimizer") is not None:
            raise TorchKerasIOError(
                "the optimizer state of a sharded (FSDP) module is not gathered; pass optimizer=None",
                filepath=filepath,
            )
        state = _full_state(inner)

        def write() -> None:
            with _swapped(inner, state):
                save_model(inner, filepath, **kwargs)

    _on_rank0(write, filepath)


def load_weights_distributed(
    module: nn.Module,
    filepath: PathLike,
    *,
    by_name: bool = False,
    skip_mismatch: bool = False,
    reshape: bool = False,
    layer_names=None,
) -> LoadReport:
    """:func:`~torchkeras_io.load_weights` into a DDP / FSDP2 module on every rank.

    Rank 0 reads the file into the gathered full state (with the usual ``by_name``,
    ``skip_mismatch``, ``reshape`` and ``layer_names`` semantics) and the result is broadcast and
    sharded to all ranks with ``set_model_state_dict(broadcast_from_rank0=True)``; only rank 0
    opens the file. Every rank returns rank 0's :class:`~torchkeras_io.LoadReport`. A
    collective; an error on rank 0 raises on every rank and leaves every module as it was.
    """
    inner = unwrap(module)
    if not _distributed():
        return load_weights(inner, filepath, by_name=by_name, skip_mismatch=skip_mismatch, reshape=reshape,
                            layer_names=layer_names)  # fmt: skip
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = _full_state(inner)
    if dist.get_rank() == 0:
        # copies: the gathered tensors may be the module's own (a CPU DDP replica)
        state = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}

    def read() -> dict:
        with _swapped(inner, state):
            report = load_weights(inner, filepath, by_name=by_name, skip_mismatch=skip_mismatch, reshape=reshape,
                                  layer_names=layer_names)  # fmt: skip
        return dataclasses.asdict(report)

    shared = _on_rank0(read, filepath)
    set_model_state_dict(
        inner, state if dist.get_rank() == 0 else {},
        options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True),
    )  # fmt: skip
    shared["mismatched"] = [Mismatch(m["layer"], m["weight"], tuple(m["file_shape"]), tuple(m["module_shape"]))
                            for m in shared["mismatched"]]  # fmt: skip
    return LoadReport(**shared)
