"""The order of ``model.layers`` that tf-keras and Keras 3 give a Functional model rebuilt from a config.

Both Kerases load a legacy HDF5 file's weights by position: the ``layer_names`` that have weights
are paired, one by one, with the layers of ``model.layers`` that have weights
(``load_weights_from_hdf5_group`` in tf-keras ``keras/saving/legacy/hdf5_format.py`` and Keras 3
``keras/src/legacy/saving/legacy_h5_format.py``). Keras 3's ``.keras`` store names each layer
``layers/<snake class>[_<n>]``, numbered in the order of ``model.layers`` (``saving_lib``'s
``_save_container_state``). Neither follows the config's ``layers`` list: ``from_config`` calls the
layers and makes a new Functional, whose ``model.layers`` is the order of ``_map_graph_network``
(tf-keras ``engine/functional.py``) / ``_build_map`` (Keras 3 ``ops/function.py``):

1. a depth-first walk from each output in turn, through each node's input tensors in flattened
   order, numbers every layer when it is first reached (so a layer's number is its pre-order
   index, the first output's layer being 0);
2. walking the nodes back from the outputs, a node's depth is 1 + the largest depth of the nodes
   that consume it (outputs 0), a layer's depth the largest of its nodes';
3. ``model.layers`` lists the layers by decreasing depth, ties by their walk number; inputs that
   reach no output come last among depth 0 with number -1. Layers that no output depends on are
   not in ``model.layers`` at all.

The flattened input tensors of a node are its positional inputs, then its tensor keyword arguments
by sorted key; Keras 3 reading a Keras 2 (list) node takes the positional inputs only (it passes
the keyword arguments on as they are, ``deserialize_node`` in ``keras/src/models/functional.py``).
A config whose ``layers`` list is already in this order rebuilds to the same order: Keras writes
``get_config`` from ``model.layers``, so every config Keras wrote is such a fixed point.
"""

from __future__ import annotations

from typing import Any, Optional

from torchkeras_io._keras.config import MODEL_CLASSES

FLAVORS = ("tf_keras", "keras3")


class ConfigGraphError(ValueError):
    """The config's graph is not one Keras can rebuild (dangling reference, cycle)."""


def is_ref(x: Any) -> bool:
    """A Keras 2 tensor reference: ``[layer, node, tensor]`` or ``[layer, node, tensor, kwargs]``."""
    return (
        isinstance(x, list) and len(x) in (3, 4) and isinstance(x[0], str) and all(isinstance(v, int) for v in x[1:3])
    )


def _sorted_values(d: dict) -> list:
    return [d[k] for k in sorted(d)]  # tree.flatten / tf.nest.flatten order of a dict


def _keras3_refs(x: Any) -> list:
    """``keras_history`` of every ``__keras_tensor__`` in a Keras 3 node argument, flattened."""
    if isinstance(x, dict):
        if x.get("class_name") == "__keras_tensor__":
            h = (x.get("config") or {}).get("keras_history")
            return [h] if isinstance(h, list) and len(h) >= 3 else []
        return [r for v in _sorted_values(x) for r in _keras3_refs(v)]
    if isinstance(x, list):
        return [r for v in x for r in _keras3_refs(v)]
    return []


def _keras2_kwarg_refs(x: Any) -> list:
    if is_ref(x):
        return [x]
    if isinstance(x, dict):
        return [r for v in _sorted_values(x) for r in _keras2_kwarg_refs(v)]
    if isinstance(x, list):
        return [r for v in x for r in _keras2_kwarg_refs(v)]
    return []


def node_parents(node: Any, flavor: str) -> list:
    """``[(layer name, node index)]`` of the tensors a config node consumes, in Keras's flattened order."""
    if isinstance(node, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        refs = _keras3_refs(node.get("args", [])) + _keras3_refs(node.get("kwargs", {}))
        return [(r[0], r[1]) for r in refs]
    if not isinstance(node, list):
        return []
    if node and isinstance(node[0], str):  # tf-keras writes a one-tensor call (TFOpLambda) as the bare entry
        node = [node]
    entries = [e for e in node if is_ref(e)]
    refs = [(e[0], e[1]) for e in entries]
    if flavor == "tf_keras" and entries and len(entries[-1]) == 4 and isinstance(entries[-1][3], dict):
        # tf-keras calls the layer with the last entry's kwargs, tensors in them deserialized
        refs += [(r[0], r[1]) for r in _keras2_kwarg_refs(entries[-1][3])]
    return refs


def _output_refs(refs: Any) -> list:
    if is_ref(refs):
        return [refs]
    if isinstance(refs, dict):
        if "keras_history" in refs or refs.get("class_name") == "__keras_tensor__":
            return [(refs.get("config") or refs).get("keras_history")]
        return [r for v in _sorted_values(refs) for r in _output_refs(v)]
    if isinstance(refs, list):
        return [r for v in refs for r in _output_refs(v)]
    return []


def layer_order(config: dict, flavor: str = "tf_keras") -> list:
    """The names of the top-level layers of ``config`` in the order of the rebuilt ``model.layers``.

    A Sequential config keeps its own order (less its InputLayer). Raises :class:`ConfigGraphError`
    for a reference to a layer or node that does not exist, or a cycle."""
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {FLAVORS}")
    cfg = config.get("config", {})
    layers = cfg if isinstance(cfg, list) else cfg.get("layers", []) if isinstance(cfg, dict) else []
    names = [_name(e) for e in layers]
    if config.get("class_name") == "Sequential" or isinstance(cfg, list):
        return [n for n, e in zip(names, layers) if e.get("class_name") != "InputLayer"]
    entries = dict(zip(names, layers))
    nested = {n for n, e in entries.items() if e.get("class_name") in MODEL_CLASSES}
    # Keras 2 numbers a nested model's outer calls from 1 when its node 0 is its own construction
    # (tf-keras ``_should_skip_first_node``): then some reference reaches index len(inbound_nodes)
    offset = dict.fromkeys(nested, 0)
    if nested:
        refs = _output_refs(cfg.get("output_layers", []))
        for e in layers:
            for node in e.get("inbound_nodes") or []:
                if isinstance(node, list):
                    refs += [list(r) for r in node_parents(node, "tf_keras")]
        for r in refs:
            if isinstance(r, list) and len(r) >= 2 and r[0] in nested and isinstance(r[1], int):
                inbound = entries[r[0]].get("inbound_nodes") or []
                if inbound and isinstance(inbound[0], list) and r[1] >= len(inbound):
                    offset[r[0]] = 1

    def node_key(name: str, index: int, user: str = "an output") -> tuple:
        entry = entries.get(name)
        if entry is None:
            raise ConfigGraphError(f"{user} refers to layer '{name}', which the config does not have")
        count = len(entry.get("inbound_nodes") or [])
        if entry.get("class_name") == "InputLayer":
            return (name, 0)
        index -= offset.get(name, 0)
        keras3_nodes = isinstance((entry.get("inbound_nodes") or [None])[0], dict)
        if user == "an output" and keras3_nodes and entry.get("class_name") in ("Functional", "Model"):
            # Keras 3 counts a nested Functional's calls from 1 in output_layers only, and indexes
            # them with the index less 1 (functional.py ``get_tensor``): 0 there means the last call
            index -= 1
            index = index + count if index == -1 else index
        if not 0 <= index < count:
            raise ConfigGraphError(f"{user} refers to node {index} of layer '{name}', which has {count}")
        return (name, index)

    def parents(key: tuple) -> list:
        entry = entries[key[0]]
        if entry.get("class_name") == "InputLayer":
            return []
        return [node_key(n, i, f"layer '{key[0]}'") for n, i in node_parents(entry["inbound_nodes"][key[1]], flavor)]

    # 1. the walk from the outputs: pre-order layer numbers, post-order nodes (iterative: deep models)
    indices: dict = {}
    finished: set = set()
    post: list = []
    for ref in _output_refs(cfg.get("output_layers", [])):
        if not isinstance(ref, (list, tuple)) or len(ref) < 2:
            raise ConfigGraphError(f"unreadable output reference {ref!r}")
        start = node_key(ref[0], ref[1])
        if start in finished:
            continue
        indices.setdefault(start[0], len(indices))
        stack = [(start, iter(parents(start)))]
        busy = {start}
        while stack:
            key, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                busy.discard(key)
                finished.add(key)
                post.append(key)
                continue
            if nxt in finished:
                continue
            if nxt in busy:
                raise ConfigGraphError(f"layer '{nxt[0]}' is part of a cycle")
            indices.setdefault(nxt[0], len(indices))
            busy.add(nxt)
            stack.append((nxt, iter(parents(nxt))))
    # 2. depths, nodes taken back from the outputs
    node_depth: dict = {}
    layer_depth: dict = {}
    for key in reversed(post):
        depth = max(node_depth.setdefault(key, 0), layer_depth.get(key[0], 0))
        layer_depth[key[0]] = depth
        node_depth[key] = depth
        for p in parents(key):
            node_depth[p] = max(depth + 1, node_depth.get(p, 0))
    for ref in _output_refs(cfg.get("input_layers", [])):
        if isinstance(ref, (list, tuple)) and ref and ref[0] in entries and ref[0] not in layer_depth:
            layer_depth[ref[0]] = 0
            indices[ref[0]] = -1
    # 3. by decreasing depth, then by walk number (a stable sort, as Keras's)
    by_depth: dict = {}
    for name, depth in layer_depth.items():
        by_depth.setdefault(depth, []).append(name)
    out = []
    for depth in sorted(by_depth, reverse=True):
        out += sorted(by_depth[depth], key=lambda n: indices[n])
    return out


def _name(entry: dict) -> Optional[str]:
    return entry.get("name", (entry.get("config") or {}).get("name"))


def in_keras_order(config: dict, flavor: str = "tf_keras") -> tuple:
    """(``config`` with its top-level ``layers`` in the rebuilt order, names of the layers left out
    because no output depends on them). A Sequential config comes back as it is."""
    cfg = config.get("config")
    if config.get("class_name") == "Sequential" or not isinstance(cfg, dict) or not cfg.get("layers"):
        return config, []
    order = layer_order(config, flavor)
    by_name = {_name(e): e for e in cfg["layers"]}
    dropped = [n for n in by_name if n not in set(order)]
    out = dict(config)
    out["config"] = dict(cfg)
    out["config"]["layers"] = [by_name[n] for n in order]
    return out, dropped
