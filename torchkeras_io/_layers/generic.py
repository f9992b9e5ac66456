"""Any other module: its own tensors, under their torch names, in registration order.

This keeps every nn.Module round-trippable; the layer has no Keras counterpart, but Keras still
reads the file (it ignores or positionally loads the group like any other).
"""

from __future__ import annotations

from torchkeras_io._layers.base import Adapter, KerasLayer, direct_tensors
from torchkeras_io._tensors import Lazy


class GenericAdapter(Adapter):
    family = "generic"

    def match(self, module):
        return bool(direct_tensors(module))

    def export(self, module, ctx=None):
        tensors = direct_tensors(module)
        buffers = tuple(name for name in tensors if name not in module._parameters)
        return [KerasLayer("TorchModule", [Lazy.of(name, t) for name, t in tensors.items()], non_trainable=buffers)]

    def load(self, module, index, weights, extras):
        return dict(zip(direct_tensors(module), weights))
