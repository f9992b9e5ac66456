"""Keras metrics in torch: per-sample functions by Keras name, and a running :class:`Mean`.

Functions take ``(y_pred, y_true)`` (torch order) and return per-sample values; a metric is the
mean of those values over every sample seen, across batches, as Keras's ``MeanMetricWrapper``.
``"accuracy"`` / ``"acc"`` are resolved from the shapes of the targets and outputs exactly as
tf.keras and Keras 3 do (:func:`resolve`).
"""

from __future__ import annotations

import re
import warnings
from typing import Callable, Optional, Union

import torch

from torchkeras_io import losses
from torchkeras_io.errors import TorchKerasIOError, TorchKerasIOWarning


def _labels(y_true, y_pred: torch.Tensor) -> torch.Tensor:
    y_true = torch.as_tensor(y_true, device=y_pred.device)
    if y_true.dim() == y_pred.dim() and y_true.shape[-1] == 1:
        y_true = y_true.squeeze(-1)
    return y_true.long()


def binary_accuracy(y_pred, y_true, threshold: float = 0.5):
    y_true = torch.as_tensor(y_true, device=y_pred.device)
    pred = (y_pred > threshold).to(y_pred.dtype if y_pred.is_floating_point() else torch.float32)
    return torch.mean((y_true.to(pred.dtype) == pred).to(pred.dtype), dim=-1)


def categorical_accuracy(y_pred, y_true):
    y_true = torch.as_tensor(y_true, device=y_pred.device)
    return (torch.argmax(y_true, dim=-1) == torch.argmax(y_pred, dim=-1)).float()


def sparse_categorical_accuracy(y_pred, y_true):
    return (_labels(y_true, y_pred) == torch.argmax(y_pred, dim=-1)).float()


def _in_top_k(y_pred: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    target = torch.gather(y_pred, -1, labels.unsqueeze(-1))
    return (torch.sum(y_pred > target, dim=-1) < k).float()  # ties count as in the top k, as tf.math.in_top_k


def top_k_categorical_accuracy(y_pred, y_true, k: int = 5):
    y_true = torch.as_tensor(y_true, device=y_pred.device)
    return _in_top_k(y_pred, torch.argmax(y_true, dim=-1), k)


def sparse_top_k_categorical_accuracy(y_pred, y_true, k: int = 5):
    return _in_top_k(y_pred, _labels(y_true, y_pred), k)


_FUNCTIONS: dict = {
    "binary_accuracy": binary_accuracy,
    "categorical_accuracy": categorical_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    "top_k_categorical_accuracy": top_k_categorical_accuracy,
    "sparse_top_k_categorical_accuracy": sparse_top_k_categorical_accuracy,
}
ALIASES = {"sparse_top_k": "sparse_top_k_categorical_accuracy", "top_k": "top_k_categorical_accuracy"}


def resolve(identifier: Union[str, Callable], y_pred: torch.Tensor, y_true) -> Callable:
    """The per-sample function ``fn(y_pred, y_true)`` of a metric name or callable.

    ``"accuracy"``/``"acc"``: ``binary_accuracy`` when the output's last axis is 1,
    ``sparse_categorical_accuracy`` when the targets have lower rank than the outputs (or a last
    axis of 1 against a wider output), else ``categorical_accuracy`` (tf.keras's rule). Loss
    names (``"mae"``, ``"mse"``, ``"binary_crossentropy"``, …) are their per-sample losses.
    """
    if not isinstance(identifier, str):
        if callable(identifier):
            return identifier
        raise TorchKerasIOError(f"a metric is a Keras name or a callable, got {type(identifier).__name__}")
    key = identifier.lower()
    if key in ("accuracy", "acc"):
        t_shape = tuple(torch.as_tensor(y_true).shape)
        p_shape = tuple(y_pred.shape)
        p_last = p_shape[-1] if p_shape else 1
        t_last = t_shape[-1] if t_shape else 1
        if p_last == 1:
            return binary_accuracy
        if len(t_shape) < len(p_shape) or (t_last == 1 and p_last > 1):
            return sparse_categorical_accuracy
        return categorical_accuracy
    key = ALIASES.get(key, key)
    if key in _FUNCTIONS:
        return _FUNCTIONS[key]
    try:
        return losses.per_sample(key)
    except TorchKerasIOError:
        raise TorchKerasIOError(f"unknown metric '{identifier}'; known: accuracy, {sorted(_FUNCTIONS)}, "
                                "and the loss names") from None  # fmt: skip


def resolved_name(identifier: Union[str, Callable], loss=None, y_pred_shape=None, y_true_shape=None) -> str:
    """The Keras function name a metric stands for (``"accuracy"`` -> ``"sparse_categorical_accuracy"``, …).

    With shapes, ``"accuracy"``/``"acc"`` follow tf.keras's shape rule (:func:`resolve`); without,
    Keras 2.0's rule from the loss name (binary / sparse categorical crossentropy, else
    categorical). What Keras writes in a ``training_config`` is this resolved function name: a bare
    ``"accuracy"`` there is re-resolved differently by tf.keras on load.
    """
    if not isinstance(identifier, str):
        return metric_name(identifier)
    key = identifier.lower()
    if key in ("accuracy", "acc"):
        if y_pred_shape is not None and y_true_shape is not None:
            fn = resolve(
                key, torch.empty(tuple(y_pred_shape), device="meta"), torch.empty(tuple(y_true_shape), device="meta")
            )
            return fn.__name__
        lname = losses.canonical_name(loss) if isinstance(loss, str) else getattr(loss, "name", None)
        if lname == "binary_crossentropy":
            return "binary_accuracy"
        if lname == "sparse_categorical_crossentropy":
            return "sparse_categorical_accuracy"
        return "categorical_accuracy"
    key = ALIASES.get(key, key)
    if key in _FUNCTIONS:
        return key
    try:
        return losses.canonical_name(key)
    except TorchKerasIOError:
        return identifier


def _known(name: str) -> bool:
    key = ALIASES.get(name.lower(), name.lower())
    if key in ("accuracy", "acc") or key in _FUNCTIONS:
        return True
    try:
        losses.canonical_name(key)
    except TorchKerasIOError:
        return False
    return True


def _stored_name(entry) -> Optional[str]:
    """A metric's name from a serialized Keras metric: MeanMetricWrapper's ``fn``, else the class's."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("class_name"), str):
        cfg = entry.get("config") if isinstance(entry.get("config"), dict) else {}
        if entry["class_name"] == "MeanMetricWrapper" and isinstance(cfg.get("fn"), str):
            return cfg["fn"]
        return re.sub(r"(?<!^)(?=[A-Z])", "_", entry["class_name"]).lower()
    return None


def from_keras(stored) -> Optional[list]:
    """The metric names a Keras ``training_config`` / ``compile_config`` holds: a list of names or
    serialized metrics, or one such list per output (tf.keras 2.x writes ``[[...]]``)."""
    if not stored:
        return None
    if isinstance(stored, dict) or (isinstance(stored, (list, tuple))
                                    and all(isinstance(e, (list, tuple)) or e is None for e in stored)):  # fmt: skip
        return from_keras(losses._single_output(stored, "metrics"))
    names = []
    for entry in stored:
        name = _stored_name(entry)
        if name is None or not _known(name):
            warnings.warn(f"the stored metric {entry!r} is not restored: no torch equivalent", TorchKerasIOWarning,
                          stacklevel=3)  # fmt: skip
            continue
        names.append(name)
    return names or None


def metric_name(identifier: Union[str, Callable]) -> str:
    """The History key Keras uses: the name as given, or a callable's ``name`` / ``__name__``."""
    if isinstance(identifier, str):
        return identifier
    name = getattr(identifier, "name", None) or getattr(identifier, "__name__", None)
    return name if isinstance(name, str) else type(identifier).__name__.lower()


class Mean:
    """Running mean over every element of the values given (Keras's ``Mean`` metric)."""

    def __init__(self, name: str = "mean") -> None:
        self.name = name
        self.reset_state()

    def reset_state(self) -> None:
        self.total = 0.0
        self.count = 0.0

    def update_state(self, values, weight: float = 1.0) -> None:
        """Add ``values`` (each counted once, or a scalar counted ``weight`` times).

        The sum stays a tensor on the values' device (no host sync per batch) until :meth:`result`.
        """
        v = torch.as_tensor(values).detach()
        v = v.to(torch.float32 if v.device.type == "mps" else torch.float64)
        if v.dim() == 0:
            self.total = self.total + v * weight
            self.count += weight
        else:
            self.total = self.total + v.sum()
            self.count += v.numel()

    def result(self) -> float:
        return float(self.total) / self.count if self.count else 0.0
