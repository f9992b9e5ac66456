"""torchkeras_io: Keras checkpoints and file formats for PyTorch models."""

__version__ = "0.1.0"

from . import distributed, losses, metrics  # noqa: E402
from .distributed import load_weights_distributed, save_model_distributed, save_weights_distributed  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointExistsError,
    CheckpointWriteError,
    FileFormatError,
    TorchKerasIOError,
    TorchKerasIOWarning,
    UnsupportedLayerError,
    WeightMismatchError,
)
from .models import History, Model, load_model, model_from_json, model_from_yaml  # noqa: E402
from .registration import register_serializable  # noqa: E402
from .saving import save_model, to_json, to_yaml  # noqa: E402
from .weights import LoadReport, Mismatch, load_weights, save_weights  # noqa: E402

__all__ = [
    "CheckpointExistsError",
    "CheckpointWriteError",
    "FileFormatError",
    "History",
    "LoadReport",
    "Model",
    "Mismatch",
    "TorchKerasIOError",
    "TorchKerasIOWarning",
    "UnsupportedLayerError",
    "WeightMismatchError",
    "distributed",
    "load_model",
    "load_weights_distributed",
    "save_model_distributed",
    "save_weights_distributed",
    "losses",
    "metrics",
    "load_weights",
    "model_from_json",
    "model_from_yaml",
    "register_serializable",
    "save_model",
    "save_weights",
    "to_json",
    "to_yaml",
]
