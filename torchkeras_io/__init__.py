"""torchkeras_io: Keras checkpoints and file formats for PyTorch models."""

from torchkeras_io import distributed, losses, metrics
from torchkeras_io._version import __version__ as __version__
from torchkeras_io.distributed import load_weights_distributed, save_model_distributed, save_weights_distributed
from torchkeras_io.errors import (
    CheckpointExistsError,
    CheckpointWriteError,
    FileFormatError,
    TorchKerasIOError,
    TorchKerasIOWarning,
    UnsupportedLayerError,
    WeightMismatchError,
)
from torchkeras_io.models import History, Model, load_model, model_from_json, model_from_yaml
from torchkeras_io.registration import register_serializable
from torchkeras_io.saving import save_model, to_json, to_yaml
from torchkeras_io.weights import LoadReport, Mismatch, load_weights, save_weights

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
