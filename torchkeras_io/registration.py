"""Registering torch classes so files can name them without importing anything.

A module that Keras cannot express is saved with a torch-side record ``{"registered_name",
"config"}``; ``load_model`` rebuilds it only from classes registered here or passed in
``custom_objects`` — a name in a file is a key into that table, never an import path.
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from torchkeras_io.errors import TorchKerasIOError

_REGISTRY: dict = {}


def register_serializable(package: str = "Custom", name: Optional[str] = None) -> Callable:
    """Class decorator, like Keras's ``register_keras_serializable``.

    The class must define ``get_config()`` returning the JSON-serialisable keyword arguments
    its ``__init__`` takes. It is registered as ``"<package>><name>"`` (name defaults to the
    class name).
    """

    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TorchKerasIOError("register_serializable decorates nn.Module subclasses")
        if not callable(getattr(cls, "get_config", None)):
            raise TorchKerasIOError(f"{cls.__name__} needs a get_config() returning its __init__ keyword arguments")
        key = f"{package}>{name or cls.__name__}"
        existing = _REGISTRY.get(key)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise TorchKerasIOError(f"'{key}' is already registered to {existing.__qualname__}")
        _REGISTRY[key] = cls
        cls._torchkeras_io_name = key
        return cls

    return deco


def registered_name(module: nn.Module) -> Optional[str]:
    key = getattr(type(module), "_torchkeras_io_name", None)
    return key if key is not None and _REGISTRY.get(key) is type(module) else None


def lookup(key: str, custom_objects: Optional[dict]) -> Optional[Callable]:
    """The class (or factory) for a registered name: custom_objects first, then the registry."""
    custom_objects = custom_objects or {}
    short = key.split(">", 1)[-1]
    return custom_objects.get(key) or custom_objects.get(short) or _REGISTRY.get(key)
