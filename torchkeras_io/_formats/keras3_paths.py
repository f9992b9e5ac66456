"""Paths in Keras 3's ``.weights.h5`` / ``.keras`` store: which are layers, and where each layer
family keeps its variables.

Keras 3 saves a layer's variables under ``<layer path>/vars/<i>``, and those of the objects it
owns under ``<layer path>/<attribute>/vars/<i>`` (docs/keras_formats.md §8.2). A layer's legacy
weight list (the order :class:`KerasLayer` and the legacy HDF5 layout use) is the concatenation
of the variables of its sub-objects, in the order this table gives; each sub-object holds the
same number of variables. Observed with Keras 3.15.1 (tests/test_keras3_formats.py):

* most layers (Dense, Conv*, DepthwiseConv*, SeparableConv*, Conv*Transpose, BatchNormalization,
  LayerNormalization, GroupNormalization, Embedding, PReLU): the layer's own ``vars``;
* recurrent layers: the cell, ``cell/vars`` (the layer's own ``vars`` is empty);
* ``Bidirectional``: ``forward_layer/cell`` then ``backward_layer/cell`` (HDF5 lists
  ``backward_layer`` first: the order is this table's, never the file's);
* ``MultiHeadAttention``: ``query_dense``, ``key_dense``, ``value_dense``, ``output_dense``;
* ``TimeDistributed``: ``layer`` then the wrapped layer's own groups.

Nothing here knows about HDF5: the store code gets relative group paths.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

RECURRENT = frozenset({"LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"})
MHA_PARTS = ("query_dense", "key_dense", "value_dense", "output_dense")

#: Keras class -> sub-object groups ("" = the layer's own ``vars``); classes not listed use ("",)
GROUPS: dict = {name: ("cell",) for name in RECURRENT}
GROUPS["Bidirectional"] = ("forward_layer/cell", "backward_layer/cell")
GROUPS["MultiHeadAttention"] = MHA_PARTS

#: the structural patterns a reader tries, most specific first, when the class is not known
PATTERNS: tuple = (
    GROUPS["Bidirectional"],
    MHA_PARTS,
    ("cell",),
    ("layer/forward_layer/cell", "layer/backward_layer/cell"),
    tuple(f"layer/{p}" for p in MHA_PARTS),
    ("layer/cell",),
    ("layer",),
    ("",),
)


def groups_for(class_name: str, inner: Optional[str] = None) -> tuple:
    """The sub-object groups of a Keras layer; ``inner`` is the wrapped class of a TimeDistributed."""
    if class_name == "TimeDistributed":
        return tuple(f"layer/{g}".rstrip("/") for g in groups_for(inner or ""))
    return GROUPS.get(class_name, ("",))


def split(groups: Sequence[str], weights: Sequence, layer: str) -> list:
    """``[(group, [weights])]``: the legacy list cut into equal runs, one per group."""
    n = len(groups)
    if len(weights) % n:
        raise ValueError(f"layer '{layer}': {len(weights)} weights do not split over the Keras 3 groups {list(groups)}")
    k = len(weights) // n
    return [(g, list(weights[i * k : (i + 1) * k])) for i, g in enumerate(groups)]


def infer_groups(present: set) -> tuple:
    """The first pattern whose groups all hold variables (``present``: relative group paths)."""
    for pattern in PATTERNS:
        if all(g in present for g in pattern):
            return pattern
    return ("",)


def layer_paths(objects) -> list:
    """Every layer path among the store's object paths: ``layers/<x>`` at the root or inside a
    nested model's path (a nested model itself is not listed, its layers are)."""
    found = set()
    for path in objects:
        segs = path.split("/") if path else []
        for i in range(1, len(segs)):
            if segs[i - 1] == "layers":
                prefix = "/".join(segs[: i - 1])
                if prefix == "" or prefix in found:
                    found.add("/".join(segs[: i + 1]))
    models = {p for p in found if any(q.startswith(f"{p}/layers/") for q in found)}
    return [p for p in found if p not in models]


def natural(path: str) -> list:
    """Sort key keeping Keras's numbering in order: ``dense``, ``dense_1``, ``dense_2``, ``dense_10``."""
    key = []
    for seg in path.split("/"):
        m = re.fullmatch(r"(.*?)(?:_(\d+))?", seg)
        key.append((m.group(1), int(m.group(2)) if m.group(2) else -1))
    return key
