"""torchkeras_io: Keras checkpoints and file formats for PyTorch models."""

__version__ = "0.1.0"

from . import losses, metrics  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointExistsError,
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
    "FileFormatError",
    "History",
    "LoadReport",
    "Model",
    "Mismatch",
    "TorchKerasIOError",
    "TorchKerasIOWarning",
    "UnsupportedLayerError",
    "WeightMismatchError",
    "load_model",
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
