"""Training a Keras-built (or any) torch module the Keras way: ``Model`` with ``compile`` / ``fit`` /
``evaluate`` / ``predict`` / ``summary``, ``History``, and the Keras optimizer defaults."""

from __future__ import annotations

import sys
import time
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from torchkeras_io import losses
from torchkeras_io import metrics as metrics_mod
from torchkeras_io._engine import model_io
from torchkeras_io._engine.transfer import LoadReport
from torchkeras_io._graph.graph import KerasGraph
from torchkeras_io._placement import module_device, module_float_dtype
from torchkeras_io.errors import TorchKerasIOError
from torchkeras_io.summary import counted_buffer, summary_rows

CustomObjects = Optional[dict]
OptimizerLike = Union[torch.optim.Optimizer, str]
_TRAINING_ATTRS = frozenset({"optimizer", "loss", "metrics", "resolved_metrics"})

# Keras's defaults (tf.keras 2.x / Keras 3) for the optimizers compile() builds by name. Where
# torch's defaults differ (Adam eps 1e-8, SGD lr required, RMSprop alpha 0.99 and lr 1e-2,
# Adagrad lr 1e-2 and accumulator 0, Adadelta lr 1.0 and rho 0.9, Adamax lr 2e-3, NAdam lr 2e-3,
# AdamW weight decay 1e-2), Keras's values are used. The update rules are torch's: Keras adds
# Adam's epsilon to the un-bias-corrected sqrt(v), torch to the corrected one, so trajectories
# differ slightly.
KERAS_OPTIMIZER_DEFAULTS: dict = {
    "sgd": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.0, "nesterov": False}),
    "adam": (torch.optim.Adam, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7, "amsgrad": False}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 1e-3, "alpha": 0.9, "momentum": 0.0, "eps": 1e-7, "centered": False}),
    "adagrad": (torch.optim.Adagrad, {"lr": 1e-3, "initial_accumulator_value": 0.1, "eps": 1e-7}),
    "adadelta": (torch.optim.Adadelta, {"lr": 1e-3, "rho": 0.95, "eps": 1e-7}),
    "adamax": (torch.optim.Adamax, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7}),
    "nadam": (torch.optim.NAdam, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-7, "weight_decay": 0.004}),
}


def _make_optimizer(optimizer: OptimizerLike, module: nn.Module) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if isinstance(optimizer, str):
        entry = KERAS_OPTIMIZER_DEFAULTS.get(optimizer.lower())
        if entry is None:
            raise TorchKerasIOError(f"unknown optimizer '{optimizer}'; known: {sorted(KERAS_OPTIMIZER_DEFAULTS)}")
        cls, kwargs = entry
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise TorchKerasIOError("the module has no trainable parameters to optimize")
        return cls(params, **kwargs)
    raise TorchKerasIOError(f"an optimizer is a torch.optim.Optimizer or a Keras name, got {type(optimizer).__name__}")


def _tensor(v) -> torch.Tensor:
    return v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))


def _to(v, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    v = _tensor(v)
    return v.to(device, dtype) if v.is_floating_point() else v.to(device)


def _target(v, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Targets: floats in the model's dtype, integer labels as int64 (what torch's losses take)."""
    v = _to(v, device, dtype)
    return v.long() if not v.is_floating_point() and v.dtype != torch.bool else v


class History:
    """What :meth:`Model.fit` returns: ``history`` ``{key: [one value per epoch]}`` and ``epoch``."""

    def __init__(self) -> None:
        self.history: dict = {}
        self.epoch: list = []

    def _append(self, epoch: int, logs: dict) -> None:
        self.epoch.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


def _fmt_logs(logs: dict) -> str:
    return " - ".join(f"{k}: {v:.4f}" if abs(v) > 1e-3 else f"{k}: {v:.4e}" for k, v in logs.items())


class _Progress:
    """Keras-style progress: ``n/n [=====] - 1s 3ms/step - loss: ...`` (verbose 1), or one line (2)."""

    def __init__(self, total: Optional[int], verbose: int, width: int = 30) -> None:
        self.total, self.verbose, self.width = total, verbose, width
        self.start = time.time()
        self.seen = 0
        self.live = verbose == 1 and sys.stdout.isatty()

    def _bar(self, step: int) -> str:
        if not self.total:
            return f"{step}/Unknown"
        done = int(self.width * step / self.total)
        arrow = ">" if step < self.total else "="
        inner = ("=" * max(done - 1, 0) + arrow if done else "").ljust(self.width, ".")
        return f"{step}/{self.total} [{inner}]"

    def update(self, step: int, logs: dict) -> None:
        self.seen = step
        if self.live:
            sys.stdout.write("\r" + self._bar(step) + " - " + _fmt_logs(logs))
            sys.stdout.flush()

    def finish(self, logs: dict) -> None:
        elapsed = time.time() - self.start
        per = elapsed / max(self.seen, 1)
        timing = f"{elapsed:.0f}s {per * 1e3:.0f}ms/step"
        head = self._bar(self.seen) if self.verbose == 1 else f"{self.seen}/{self.total or self.seen}"
        print(("\r" if self.live else "") + f"{head} - {timing} - {_fmt_logs(logs)}", flush=True)


class Model(nn.Module):
    """A torch module with Keras's model workflow around it.

    ``model.module`` is the underlying network (for models built from Keras configs, a
    :class:`KerasGraph` whose forward takes inputs in the Keras model's own layout).
    """

    def __init__(self, module: nn.Module, optimizer=None, loss=None, metrics=None) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TorchKerasIOError(f"Model wraps an nn.Module, got {type(module).__name__}")
        self.module = module
        self.optimizer = None
        self.loss = loss
        self.metrics = list(metrics) if metrics is not None else None
        # Keras function names of the metrics ("accuracy" -> "sparse_categorical_accuracy"), known
        # once fit/evaluate has seen the output and target shapes (what Keras saves)
        self.resolved_metrics: Optional[list] = None
        if optimizer is not None:
            self.optimizer = _make_optimizer(optimizer, self.module)

    def __setattr__(self, name: str, value) -> None:
        # the training configuration is plain state, never registered as submodules or parameters
        if name in _TRAINING_ATTRS:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, *args, **kwargs):
        if getattr(self, "_input_shape", None) is None and args and all(isinstance(a, torch.Tensor) for a in args):
            # like a built Keras model, remember the per-sample input shape (save / to_json need it)
            shapes = [tuple(a.shape[1:]) for a in args]
            self._input_shape = shapes[0] if len(shapes) == 1 else shapes
        return self.module(*args, **kwargs)

    # ------------------------------------------------------------------------------ training
    def compile(self, optimizer: OptimizerLike, loss: losses.LossLike, metrics: Optional[list] = None) -> None:
        """Set the optimizer, loss and metrics for :meth:`fit` / :meth:`evaluate`.

        ``optimizer``: a ``torch.optim.Optimizer``, or a Keras name (``"adam"``, ``"sgd"``,
        ``"rmsprop"``, ``"adagrad"``, ``"adadelta"``, ``"adamax"``, ``"nadam"``, ``"adamw"``) built
        over the module's trainable parameters with Keras's default hyper-parameters (see
        :data:`KERAS_OPTIMIZER_DEFAULTS`). ``loss``: a Keras loss name, or a callable
        ``(y_pred, y_true) -> scalar`` (a torch loss module works). ``metrics``: names or callables.
        ``model.loss`` / ``model.metrics`` keep what was given (names stay names).
        This is Keras's ``compile``: it replaces ``nn.Module.compile`` (use ``torch.compile(model.module)``).
        """
        if loss is None:
            raise TorchKerasIOError("compile needs a loss")
        losses.get(loss)  # validate names now
        for m in metrics or []:
            if isinstance(m, str) and m.lower() not in ("accuracy", "acc"):
                metrics_mod.resolve(m, torch.zeros(1, 1), torch.zeros(1, 1))
        self.optimizer = _make_optimizer(optimizer, self.module)
        self.loss = loss
        self.metrics = list(metrics) if metrics is not None else None
        self.resolved_metrics = None

    def _loss_fn(self) -> Callable:
        if self.loss is None:
            raise TorchKerasIOError("the model has no loss: call model.compile(optimizer, loss) first")
        return losses.get(self.loss)

    def _batches(self, x, y, batch_size: int, shuffle: bool) -> Iterator[tuple]:
        """(inputs list, target) mini-batches on the module's device."""
        device, dtype = self._device(), self._float_dtype()
        if isinstance(x, DataLoader):
            for batch in x:
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise TorchKerasIOError("a DataLoader given to fit/evaluate must yield (x, y) pairs")
                bx, by = batch
                bx = list(bx) if isinstance(bx, (list, tuple)) else [bx]
                yield [_to(v, device, dtype) for v in bx], _target(by, device, dtype)
            return
        if y is None:
            raise TorchKerasIOError("targets y are needed (or a DataLoader yielding (x, y))")
        inputs = [_tensor(v) for v in (x if isinstance(x, (list, tuple)) else [x])]
        target = _tensor(y)
        n = inputs[0].shape[0]
        if any(v.shape[0] != n for v in inputs) or target.shape[0] != n:
            raise TorchKerasIOError(f"inputs and targets differ in their number of samples: "
                                    f"{[v.shape[0] for v in inputs]} vs {target.shape[0]}")  # fmt: skip
        order = torch.randperm(n) if shuffle else None
        for start in range(0, n, batch_size):
            if order is None:
                sl = slice(start, start + batch_size)
                yield [_to(v[sl], device, dtype) for v in inputs], _target(target[sl], device, dtype)
            else:
                idx = order[start : start + batch_size]
                yield [_to(v[idx], device, dtype) for v in inputs], _target(target[idx], device, dtype)

    def _num_batches(self, x, batch_size: int) -> Optional[int]:
        if isinstance(x, DataLoader):
            try:
                return len(x)
            except TypeError:
                return None
        first = x[0] if isinstance(x, (list, tuple)) else x
        return -(-len(first) // batch_size)

    def _run_epoch(self, x, y, batch_size: int, shuffle: bool, train: bool, bar: Optional[_Progress]) -> dict:
        loss_fn = self._loss_fn()
        loss_mean = metrics_mod.Mean("loss")
        specs = list(self.metrics or [])
        fns: Optional[list] = None
        means = [metrics_mod.Mean(metrics_mod.metric_name(m)) for m in specs]
        self.module.train(train)
        for step, (inputs, target) in enumerate(self._batches(x, y, batch_size, shuffle), 1):
            with torch.set_grad_enabled(train):
                out = self(*inputs)
                if isinstance(out, (tuple, list)):
                    raise TorchKerasIOError("fit/evaluate support single-output models only")
                loss = loss_fn(out, target)
                if train:
                    self.optimizer.zero_grad()
                    loss.backward()
                    self.optimizer.step()
            loss_mean.update_state(loss.detach(), weight=out.shape[0] if out.dim() else 1)
            if specs:
                with torch.no_grad():
                    if fns is None:
                        fns = [metrics_mod.resolve(m, out, target) for m in specs]
                        names = [metrics_mod.resolved_name(m, self.loss, out.shape, target.shape) for m in specs]
                        self.resolved_metrics = names
                    for fn, mean in zip(fns, means):
                        mean.update_state(fn(out.detach(), target))
            if bar is not None:
                bar.seen = step
                if bar.live:  # reading the running means syncs with the device: only for a live bar
                    bar.update(step, {"loss": loss_mean.result(), **{m.name: m.result() for m in means}})
        return {"loss": loss_mean.result(), **{m.name: m.result() for m in means}}

    def fit(self, x, y=None, batch_size: int = 32, epochs: int = 1, verbose: int = 1, validation_data=None,
            shuffle: bool = True) -> History:  # fmt: skip
        """Train for ``epochs`` passes over ``(x, y)``, as Keras's ``fit``.

        ``x``: an array / tensor, a list of them for several inputs, or a ``DataLoader`` yielding
        ``(x, y)`` (then ``y`` and ``batch_size`` are not used and the loader does its own
        shuffling). Mini-batches are shuffled with torch's global RNG (reproducible under
        ``torch.manual_seed``). ``validation_data``: ``(x_val, y_val)`` or a ``DataLoader``,
        evaluated in eval mode after each epoch. ``verbose``: 0 silent, 1 progress bar, 2 one line
        per epoch. The loss and metrics reported are averages over the epoch's samples.
        """
        if self.optimizer is None:
            raise TorchKerasIOError("the model has no optimizer: call model.compile(optimizer, loss) first")
        if isinstance(self.optimizer, str):
            self.optimizer = _make_optimizer(self.optimizer, self.module)
        history = History()
        was_training = self.module.training
        try:
            for epoch in range(epochs):
                if verbose:
                    print(f"Epoch {epoch + 1}/{epochs}", flush=True)
                bar = _Progress(self._num_batches(x, batch_size), verbose) if verbose else None
                logs = self._run_epoch(x, y, batch_size, shuffle, True, bar)
                if validation_data is not None:
                    if isinstance(validation_data, DataLoader):
                        vx, vy = validation_data, None
                    elif isinstance(validation_data, (tuple, list)) and len(validation_data) == 2:
                        vx, vy = validation_data
                    else:
                        raise TorchKerasIOError("validation_data is (x_val, y_val) or a DataLoader")
                    with torch.no_grad():
                        val = self._run_epoch(vx, vy, batch_size, False, False, None)
                    logs.update({f"val_{k}": v for k, v in val.items()})
                history._append(epoch, logs)
                if bar is not None:
                    bar.finish(logs)
        finally:
            self.module.train(was_training)
        return history

    def evaluate(self, x, y=None, batch_size: int = 32, verbose: int = 1) -> Union[float, list]:
        """The loss (a float), or ``[loss, *metrics]`` when metrics are compiled, as Keras returns.

        Computed in eval mode without gradients; ``x`` as in :meth:`fit`.
        """
        was_training = self.module.training
        bar = _Progress(self._num_batches(x, batch_size), verbose) if verbose else None
        try:
            with torch.no_grad():
                logs = self._run_epoch(x, y, batch_size, False, False, bar)
        finally:
            self.module.train(was_training)
        if bar is not None:
            bar.finish(logs)
        values = list(logs.values())
        return values if self.metrics else values[0]

    def _float_dtype(self) -> torch.dtype:
        return module_float_dtype(self.module)

    # ------------------------------------------------------------------------------ summary
    def summary(self, input_shape=None, line_length: int = 90) -> None:
        """Print a Keras-like table of layers: name, type, output shape, parameter counts.

        Models built from Keras configs list their Keras layers, with output shapes; for other
        modules the rows are the modules that own parameters, with output shapes when
        ``input_shape`` (per sample, a list for several inputs) is given.
        """
        rows = summary_rows(self.module, input_shape)
        trainable = sum(p.numel() for p in self.module.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.module.parameters() if not p.requires_grad)
        frozen += sum(b.numel() for n, b in self.module.named_buffers() if counted_buffer(n, b))
        name = self.module.keras_name if isinstance(self.module, KerasGraph) else type(self.module).__name__
        widths = [max(24, line_length - 56), 30, 14]
        head = ["Layer (type)", "Output Shape", "Param #"]

        def line(cols):
            return "".join(str(c).ljust(w) for c, w in zip(cols, widths)).rstrip()

        out = [f'Model: "{name}"', "_" * line_length, line(head), "=" * line_length]
        for i, (lname, ltype, shape, count) in enumerate(rows):
            out.append(line([f"{lname} ({ltype})", shape, f"{count:,}"]))
            out.append(("=" if i == len(rows) - 1 else "_") * line_length)
        if not rows:
            out.append("=" * line_length)
        out += [f"Total params: {trainable + frozen:,}", f"Trainable params: {trainable:,}",
                f"Non-trainable params: {frozen:,}", "_" * line_length]  # fmt: skip
        print("\n".join(out))

    @property
    def keras_layer_names(self) -> Optional[dict]:
        """``{module path: Keras layer name}`` when the network came from a Keras config."""
        return self.module.keras_layer_names() if isinstance(self.module, KerasGraph) else None

    def _device(self) -> torch.device:
        return module_device(self.module)

    @torch.no_grad()
    def predict(self, x, batch_size: int = 32):
        """Outputs as numpy arrays, computed in batches in eval mode (several inputs: a list).

        Inputs go where the module's parameters and buffers are, floating-point ones in their
        dtype (as :meth:`fit` feeds them). On the ``meta`` device there are no values to return:
        the outputs are meta tensors (shapes and dtypes only)."""
        inputs = list(x) if isinstance(x, (list, tuple)) else [x]
        inputs = [torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v) for v in inputs]
        n = inputs[0].shape[0]
        was_training = self.module.training
        self.module.eval()
        device, dtype = self._device(), self._float_dtype()
        chunks = []
        try:
            for start in range(0, n, batch_size):
                out = self(*[_to(v[start : start + batch_size], device, dtype) for v in inputs])
                chunks.append(out if isinstance(out, tuple) else (out,))
        finally:
            self.module.train(was_training)
        outs = [torch.cat([c[i] for c in chunks]) for i in range(len(chunks[0]))] if chunks else []
        outs = [o if o.device.type == "meta" else o.cpu().numpy() for o in outs]
        return outs[0] if len(outs) == 1 else outs

    def save_weights(self, filepath, overwrite: bool = True) -> None:
        model_io.save_weights(self.module, filepath, overwrite=overwrite, layer_names=self.keras_layer_names)

    def load_weights(self, filepath, by_name: bool = False, skip_mismatch: bool = False,
                     reshape: bool = False) -> LoadReport:  # fmt: skip
        return model_io.load_weights(self.module, filepath, by_name=by_name, skip_mismatch=skip_mismatch,
                                     reshape=reshape, layer_names=self.keras_layer_names)  # fmt: skip

    def save(self, filepath, overwrite: bool = True, include_optimizer: bool = True) -> None:
        """:func:`torchkeras_io.save_model` of this model with its optimizer, loss and metrics."""
        kwargs = {"optimizer": self.optimizer, "loss": self.loss, "metrics": self.metrics}
        if getattr(self, "scheduler", None) is not None:
            kwargs["scheduler"] = self.scheduler
        if getattr(self, "_input_shape", None) is not None:
            kwargs["input_shape"] = self._input_shape
        model_io.save_model(self.module, filepath, overwrite=overwrite, include_optimizer=include_optimizer, **kwargs)

    def to_json(self, **kwargs) -> str:
        """The Keras model config of the network, as :func:`torchkeras_io.to_json`."""
        return model_io.to_json(self.module, **kwargs)

    def to_yaml(self, **kwargs) -> str:
        """As :meth:`to_json`, in YAML."""
        return model_io.to_yaml(self.module, **kwargs)


# ------------------------------------------------------------------------------------ configs
