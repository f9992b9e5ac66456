"""Keras losses in torch, by Keras name, with Keras's numerics (epsilon clipping, mean reduction).

Every loss is called torch-style, ``loss(y_pred, y_true)``, and returns a scalar: the per-sample
loss (Keras's loss function, reduced over the last axis) averaged over all remaining elements,
as Keras's default ``sum_over_batch_size`` reduction does.

>>> fn = get("sparse_categorical_crossentropy", from_logits=True)
>>> fn(torch.randn(4, 3), torch.tensor([0, 2, 1, 1]))
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from torchkeras_io.errors import TorchKerasIOError, TorchKerasIOWarning

EPSILON = 1e-7  # keras.backend.epsilon()


def _clip(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return torch.clamp(x, lo, hi)


def _cast(y_pred: torch.Tensor, y_true) -> tuple:
    y_true = torch.as_tensor(y_true, device=y_pred.device)
    if not y_pred.is_floating_point():
        y_pred = y_pred.float()
    return y_pred, y_true.to(y_pred.dtype)


# ---------------------------------------------------------------------- per-sample functions
# Each takes (y_pred, y_true) and returns Keras's un-reduced loss (the last axis reduced).
def mean_squared_error(y_pred, y_true):
    y_pred, y_true = _cast(y_pred, y_true)
    return torch.mean(torch.square(y_pred - y_true), dim=-1)


def mean_absolute_error(y_pred, y_true):
    y_pred, y_true = _cast(y_pred, y_true)
    return torch.mean(torch.abs(y_pred - y_true), dim=-1)


def mean_absolute_percentage_error(y_pred, y_true):
    y_pred, y_true = _cast(y_pred, y_true)
    diff = torch.abs((y_true - y_pred) / torch.clamp(torch.abs(y_true), min=EPSILON))
    return 100.0 * torch.mean(diff, dim=-1)


def mean_squared_logarithmic_error(y_pred, y_true):
    y_pred, y_true = _cast(y_pred, y_true)
    a = torch.log(torch.clamp(y_pred, min=EPSILON) + 1.0)
    b = torch.log(torch.clamp(y_true, min=EPSILON) + 1.0)
    return torch.mean(torch.square(a - b), dim=-1)


def huber(y_pred, y_true, delta: float = 1.0):
    y_pred, y_true = _cast(y_pred, y_true)
    error = y_pred - y_true
    abs_error = torch.abs(error)
    quad = 0.5 * torch.square(error)
    lin = delta * abs_error - 0.5 * delta**2
    return torch.mean(torch.where(abs_error <= delta, quad, lin), dim=-1)


def binary_crossentropy(y_pred, y_true, from_logits: bool = False):
    y_pred, y_true = _cast(y_pred, y_true)
    if from_logits:
        bce = F.binary_cross_entropy_with_logits(y_pred, y_true, reduction="none")
    else:
        p = _clip(y_pred, EPSILON, 1.0 - EPSILON)
        bce = -(y_true * torch.log(p + EPSILON) + (1.0 - y_true) * torch.log(1.0 - p + EPSILON))
    return torch.mean(bce, dim=-1)


def categorical_crossentropy(y_pred, y_true, from_logits: bool = False):
    y_pred, y_true = _cast(y_pred, y_true)
    if from_logits:
        return -torch.sum(y_true * torch.log_softmax(y_pred, dim=-1), dim=-1)
    p = y_pred / torch.sum(y_pred, dim=-1, keepdim=True)
    p = _clip(p, EPSILON, 1.0 - EPSILON)
    return -torch.sum(y_true * torch.log(p), dim=-1)


def sparse_categorical_crossentropy(y_pred, y_true, from_logits: bool = False):
    if not y_pred.is_floating_point():
        y_pred = y_pred.float()
    labels = torch.as_tensor(y_true, device=y_pred.device)
    if labels.dim() == y_pred.dim() and labels.shape[-1] == 1:
        labels = labels.squeeze(-1)
    labels = labels.long()
    # Keras: probabilities are clipped, then their logs are used as logits (so they are renormalised)
    logits = y_pred if from_logits else torch.log(_clip(y_pred, EPSILON, 1.0 - EPSILON))
    logp = torch.log_softmax(logits, dim=-1)
    return -torch.gather(logp, -1, labels.unsqueeze(-1)).squeeze(-1)


def kl_divergence(y_pred, y_true):
    y_pred, y_true = _cast(y_pred, y_true)
    t = _clip(y_true, EPSILON, 1.0)
    p = _clip(y_pred, EPSILON, 1.0)
    return torch.sum(t * torch.log(t / p), dim=-1)


def poisson(y_pred, y_true):
    y_pred, y_true = _cast(y_pred, y_true)
    return torch.mean(y_pred - y_true * torch.log(y_pred + EPSILON), dim=-1)


def hinge(y_pred, y_true):
    y_pred, y_true = _cast(y_pred, y_true)
    if bool(torch.all((y_true == 0) | (y_true == 1))):  # Keras converts {0, 1} labels to {-1, 1}
        y_true = 2.0 * y_true - 1.0
    return torch.mean(torch.clamp(1.0 - y_true * y_pred, min=0.0), dim=-1)


def cosine_similarity(y_pred, y_true):
    y_pred, y_true = _cast(y_pred, y_true)

    def l2n(x):
        return x * torch.rsqrt(torch.clamp(torch.sum(torch.square(x), dim=-1, keepdim=True), min=1e-12))

    return -torch.sum(l2n(y_true) * l2n(y_pred), dim=-1)


_FUNCTIONS: dict = {
    "mean_squared_error": mean_squared_error,
    "mean_absolute_error": mean_absolute_error,
    "mean_absolute_percentage_error": mean_absolute_percentage_error,
    "mean_squared_logarithmic_error": mean_squared_logarithmic_error,
    "huber": huber,
    "binary_crossentropy": binary_crossentropy,
    "categorical_crossentropy": categorical_crossentropy,
    "sparse_categorical_crossentropy": sparse_categorical_crossentropy,
    "kl_divergence": kl_divergence,
    "poisson": poisson,
    "hinge": hinge,
    "cosine_similarity": cosine_similarity,
}
ALIASES: dict = {
    "mse": "mean_squared_error",
    "mae": "mean_absolute_error",
    "mape": "mean_absolute_percentage_error",
    "msle": "mean_squared_logarithmic_error",
    "huber_loss": "huber",
    "kld": "kl_divergence",
    "kullback_leibler_divergence": "kl_divergence",
    "cosine_proximity": "cosine_similarity",
    # Keras class names
    "meansquarederror": "mean_squared_error",
    "meanabsoluteerror": "mean_absolute_error",
    "meanabsolutepercentageerror": "mean_absolute_percentage_error",
    "meansquaredlogarithmicerror": "mean_squared_logarithmic_error",
    "binarycrossentropy": "binary_crossentropy",
    "categoricalcrossentropy": "categorical_crossentropy",
    "sparsecategoricalcrossentropy": "sparse_categorical_crossentropy",
    "kldivergence": "kl_divergence",
    "cosinesimilarity": "cosine_similarity",
}
_FROM_LOGITS = ("binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy")


def canonical_name(name: str) -> str:
    """The full Keras function name of a loss name or alias (``"mse"`` -> ``"mean_squared_error"``)."""
    key = name.lower()
    key = ALIASES.get(key, key)
    if key not in _FUNCTIONS:
        raise TorchKerasIOError(f"unknown loss '{name}'; known: {sorted(_FUNCTIONS)} and aliases {sorted(ALIASES)}")
    return key


def per_sample(name: str) -> Callable:
    """The un-reduced Keras loss function ``fn(y_pred, y_true)`` for a name or alias."""
    return _FUNCTIONS[canonical_name(name)]


class Loss:
    """A Keras loss by name: ``loss(y_pred, y_true)`` -> scalar (mean over samples)."""

    def __init__(self, name: str, from_logits: bool = False, **kwargs) -> None:
        self.name = canonical_name(name)
        self.from_logits = bool(from_logits)
        if self.from_logits and self.name not in _FROM_LOGITS:
            raise TorchKerasIOError(f"loss '{self.name}' takes no from_logits")
        self.kwargs = dict(kwargs, from_logits=True) if self.from_logits else dict(kwargs)
        self.fn = _FUNCTIONS[self.name]
        self.__name__ = self.name

    def __call__(self, y_pred: torch.Tensor, y_true) -> torch.Tensor:
        return torch.mean(self.fn(y_pred, y_true, **self.kwargs))

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"Loss({self.name!r}{extra})"

    def keras_config(self) -> Union[str, dict]:
        """What Keras stores for this loss: its name, or a serialized loss object when it has arguments."""
        if not self.kwargs:
            return self.name
        class_name = _CLASS_NAMES.get(self.name) or "".join(w.capitalize() for w in self.name.split("_"))
        return {"class_name": class_name, "config": {"name": self.name, **self.kwargs}}


_CLASS_NAMES = {"kl_divergence": "KLDivergence", "huber": "Huber"}


LossLike = Union[str, Callable, None]


def _single_output(stored, what: str):
    """The one entry of a per-output list or dict; None (with a warning) for several outputs."""
    entries = list(stored.values()) if isinstance(stored, dict) else list(stored)
    if len(entries) == 1:
        return entries[0]
    warnings.warn(f"{what} for {len(entries)} outputs are not restored: Model.fit trains one output",
                  TorchKerasIOWarning, stacklevel=4)  # fmt: skip
    return None


def from_keras(stored) -> LossLike:
    """The loss a Keras ``training_config`` / ``compile_config`` holds: a name, a serialized loss
    object (``{"class_name": "SparseCategoricalCrossentropy", "config": {"from_logits": true}}``),
    or one of those per output."""
    if stored is None or isinstance(stored, str):
        return stored
    if isinstance(stored, dict) and "class_name" in stored:
        cfg = stored.get("config") if isinstance(stored.get("config"), dict) else {}
        name = cfg.get("fn") if stored["class_name"] == "LossFunctionWrapper" else stored["class_name"]
        try:
            loss = Loss(str(name), from_logits=bool(cfg.get("from_logits", False)))
        except TorchKerasIOError as exc:
            warnings.warn(f"the stored loss is not restored: {exc.message}", TorchKerasIOWarning, stacklevel=3)
            return None
        return loss if loss.kwargs else loss.name
    if isinstance(stored, (list, tuple, dict)) and stored:
        return from_keras(_single_output(stored, "losses"))
    return None


def get(identifier: LossLike, from_logits: bool = False, **kwargs) -> Optional[Callable]:
    """Resolve a loss: a Keras name (``"mse"``, ``"sparse_categorical_crossentropy"``, …) gives a
    :class:`Loss`; a callable ``(y_pred, y_true) -> scalar`` (a torch loss module included) is
    returned as is; ``None`` stays ``None``."""
    if identifier is None or (callable(identifier) and not isinstance(identifier, str)):
        return identifier
    if isinstance(identifier, str):
        return Loss(identifier, from_logits=from_logits, **kwargs)
    raise TorchKerasIOError(f"a loss is a Keras name or a callable, got {type(identifier).__name__}")
