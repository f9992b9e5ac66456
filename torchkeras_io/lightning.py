"""PyTorch Lightning: write Keras-format checkpoints while training, like ``keras.callbacks.ModelCheckpoint``.

Needs ``lightning`` (or ``pytorch_lightning``) >= 2: ``pip install 'torchkeras-io[lightning]'``.
This module is imported only on request (``from torchkeras_io.lightning import KerasModelCheckpoint``).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Optional, Union

import torch
from torch import nn

from torchkeras_io import distributed
from torchkeras_io.errors import TorchKerasIOError, TorchKerasIOWarning
from torchkeras_io.saving import save_model
from torchkeras_io.weights import save_weights

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning import Callback
    except ImportError as exc:
        raise ImportError(
            "torchkeras_io.lightning needs PyTorch Lightning: pip install 'torchkeras-io[lightning]'"
        ) from exc

__all__ = ["KerasModelCheckpoint"]


class KerasModelCheckpoint(Callback):
    """Save the model (or its weights) as Keras HDF5 files during ``Trainer.fit``, with Keras's semantics.

    ``filepath`` may hold Keras's placeholders, filled from the epoch (1-based, as Keras counts),
    the batch (``save_freq`` in batches) and the logged metrics:
    ``"ckpt/w-{epoch:02d}-{val_loss:.2f}.h5"``. ``save_best_only=True`` writes only when
    ``monitor`` improves (``mode``: ``"min"``, ``"max"`` or ``"auto"``: max for accuracy-like
    names, else min; ``initial_value_threshold`` sets the value to beat) and keeps the earlier
    files, as Keras does; otherwise every epoch (or every ``save_freq`` batches) is written.
    ``save_weights_only=True`` writes :func:`~torchkeras_io.save_weights` files, which Keras's
    ``model.load_weights`` reads; otherwise :func:`~torchkeras_io.save_model` files (architecture,
    weights and the optimizer state, which ``tkio.load_model`` restores), which need an
    ``input_shape`` (default: ``example_input_array`` of the LightningModule, without its batch
    axis). ``save_last=True`` also writes the latest state to ``last.h5`` beside ``filepath``
    (``last_filepath`` overrides the path). ``submodule`` names the attribute to save (``"net"``)
    instead of the whole LightningModule. Extra keyword arguments go to ``save_model``
    (``loss``, ``metrics``, ``channels_last``).

    After training, ``best`` is the best monitored value, ``best_model_path`` and
    ``last_model_path`` the files written. In a multi-process job (DDP, FSDP2) every rank calls
    the callback and rank 0 writes the gathered state (without the optimizer state).
    """

    def __init__(
        self,
        filepath: Union[str, os.PathLike],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: Union[str, int] = "epoch",
        initial_value_threshold: Optional[float] = None,
        *,
        save_last: bool = False,
        last_filepath: Union[str, os.PathLike, None] = None,
        submodule: Optional[str] = None,
        input_shape: Any = None,
        **save_kwargs: Any,
    ) -> None:
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise TorchKerasIOError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if save_freq != "epoch" and not (isinstance(save_freq, int) and save_freq > 0):
            raise TorchKerasIOError(f"save_freq must be 'epoch' or a positive number of batches, got {save_freq!r}")
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.save_freq = save_freq
        self.save_last = save_last or last_filepath is not None
        self.last_filepath = (
            os.fspath(last_filepath)
            if last_filepath is not None
            else os.path.join(os.path.dirname(self.filepath), "last.h5")
        )
        self.submodule = submodule
        self.input_shape = input_shape
        self.save_kwargs = save_kwargs
        if mode == "auto":
            name = monitor.lower()
            mode = "max" if "acc" in name or "auc" in name or name.startswith("fmeasure") else "min"
        self.mode = mode
        if initial_value_threshold is not None:
            self.best = float(initial_value_threshold)
        else:
            self.best = math.inf if mode == "min" else -math.inf
        self.best_model_path = ""
        self.last_model_path = ""
        self._batches_seen = 0

    # -------------------------------------------------------------------------------- lightning hooks
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:  # noqa: D102
        if self.save_freq == "epoch":
            return
        self._batches_seen += 1
        if self._batches_seen % self.save_freq == 0:
            self._save(trainer, pl_module, batch=batch_idx + 1)

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: D102
        # Lightning runs the epoch's validation before this hook, so val_* metrics are here
        if self.save_freq == "epoch":
            self._save(trainer, pl_module, batch=None)

    @property
    def state_key(self) -> str:  # noqa: D102 - several instances in one Trainer keep their own state
        return self._generate_state_key(monitor=self.monitor, filepath=self.filepath)

    def state_dict(self) -> dict:  # noqa: D102
        return {"best": self.best, "best_model_path": self.best_model_path, "last_model_path": self.last_model_path}

    def load_state_dict(self, state_dict: dict) -> None:  # noqa: D102
        self.best = state_dict["best"]
        self.best_model_path = state_dict["best_model_path"]
        self.last_model_path = state_dict["last_model_path"]

    # -------------------------------------------------------------------------------------- saving
    def _save(self, trainer, pl_module, batch: Optional[int]) -> None:
        logs = {k: _scalar(v) for k, v in trainer.callback_metrics.items()}
        epoch = trainer.current_epoch
        # every rank decides as rank 0 does: its metrics are the ones that count
        decision = trainer.strategy.broadcast(self._decide(logs, epoch, batch), src=0)
        write, filepath, message, current = decision
        if self.verbose and trainer.is_global_zero and message:
            print(message)
        if write:
            self._write(trainer, pl_module, filepath)
            if self.save_best_only:
                self.best, self.best_model_path = current, filepath
        if self.save_last:
            self._write(trainer, pl_module, self.last_filepath)
            self.last_model_path = self.last_filepath

    def _decide(self, logs: dict, epoch: int, batch: Optional[int]):
        """(write?, formatted path, Keras's verbose message, new best) for this epoch or batch."""
        try:
            fields = dict(logs, epoch=epoch + 1) if batch is None else dict(logs, epoch=epoch + 1, batch=batch)
            filepath = self.filepath.format(**fields)
        except KeyError as exc:
            raise TorchKerasIOError(
                f"filepath '{self.filepath}' names {exc}, which is not a logged metric; logged: {sorted(logs)}"
            ) from exc
        if not self.save_best_only:
            return True, filepath, f"\nEpoch {epoch + 1}: saving model to {filepath}", None
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(
                f"Can save best model only with {self.monitor} available, skipping (logged: {sorted(logs)})",
                TorchKerasIOWarning,
                stacklevel=3,
            )
            return False, filepath, "", None
        better = current < self.best if self.mode == "min" else current > self.best
        if better:
            return (
                True,
                filepath,
                (
                    f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} to {current:.5f}, "
                    f"saving model to {filepath}"
                ),
                current,
            )
        return False, filepath, f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {self.best:.5f}", None

    def _module(self, pl_module) -> nn.Module:
        return pl_module.get_submodule(self.submodule) if self.submodule else pl_module

    def _write(self, trainer, pl_module, filepath: str) -> None:
        module = self._module(pl_module)
        if trainer.is_global_zero:
            os.makedirs(os.path.dirname(os.path.abspath(filepath)), exist_ok=True)
        multi = trainer.world_size > 1
        if self.save_weights_only:
            (distributed.save_weights_distributed if multi else save_weights)(module, filepath)
            return
        kwargs = dict(self.save_kwargs, input_shape=self._input_shape(pl_module))
        if multi:
            distributed.save_model_distributed(module, filepath, **kwargs)
        else:
            optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
            save_model(module, filepath, optimizer=optimizer, **kwargs)

    def _input_shape(self, pl_module):
        if self.input_shape is not None:
            return self.input_shape
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, torch.Tensor):
            return tuple(example.shape[1:])
        if isinstance(example, (list, tuple)) and all(isinstance(e, torch.Tensor) for e in example):
            return [tuple(e.shape[1:]) for e in example]
        return None  # save_model says what is missing if the module does not fix its input


def _scalar(value) -> Any:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().cpu())
    return value
