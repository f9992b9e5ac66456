"""Where a module's tensors live (device, float dtype): one answer for every caller that feeds it.

A converted Keras model may hold only buffers (a tf.keras graph of ``TFOpLambda`` ops, whose
constants are in its config): asking its parameters alone would say "CPU, float32" after
``.to("cuda")`` or ``.double()``. Parameters come first, then buffers.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter, else of its first buffer, else the CPU."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return torch.device("cpu")


def module_float_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s first floating-point parameter, else buffer, else torch's default."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.get_default_dtype()
