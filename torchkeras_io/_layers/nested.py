"""A torch container standing for a nested Keras model (a Sequential inside a Functional, …).

Keras stores a nested model as ONE layer group whose weights are the trainable weights of all
its sub-layers, in order, then all the non-trainable ones (docs/keras_formats.md §3.5). This
adapter is not in the registry: it is made on request, when ``layer_names`` gives a Keras name
to a container module.
"""

from __future__ import annotations

from torchkeras_io._layers.base import Adapter, KerasLayer


class NestedAdapter(Adapter):
    family = "nested"
    claims_children = True

    def __init__(self, parts: list) -> None:
        #: (relative path, module, adapter, index, KerasLayer) for each sub-layer
        self.parts = parts

    def match(self, module):  # pragma: no cover - never looked up in the registry
        return False

    def _order(self):
        """(part, weight position) pairs in the nested model's flattened Keras order."""
        trainable, frozen = [], []
        for part in self.parts:
            layer = part[4]
            params = list(part[1].parameters())
            # a frozen layer (Keras trainable=False, torch requires_grad=False) lists all its weights
            # with the non-trainable ones, in its own order
            all_frozen = bool(params) and not any(p.requires_grad for p in params)
            for i, w in enumerate(layer.weights):
                (frozen if all_frozen or w.name in layer.non_trainable else trainable).append((part, i))
        return trainable + frozen

    def export(self, module, ctx=None):
        weights, extras = [], []
        for (path, _, _, _, layer), i in self._order():
            w = layer.weights[i]
            weights.append(w.renamed(f"{path}/{w.name}") if path else w)
        for path, _, _, _, layer in self.parts:
            extras += [e.renamed(f"{path}.{e.name}") for e in layer.extras]
        return [KerasLayer("Functional", weights, extras)]

    def load(self, module, index, weights, extras):
        per_part = {id(p): [None] * len(p[4].weights) for p in self.parts}
        for (part, i), w in zip(self._order(), weights):
            per_part[id(part)][i] = w
        out = {}
        for part in self.parts:
            path, sub, adapter, k, _ = part
            prefix = f"{path}." if path else ""
            own = {name[len(prefix) :]: e for name, e in extras.items() if name.startswith(prefix)}
            for name, lazy in adapter.load(sub, k, per_part[id(part)], own).items():
                out[prefix + name] = lazy
        return out
