"""save_weights / load_weights: any nn.Module <-> the Keras legacy-HDF5 weights layout."""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Optional, Union

import h5py
import torch
from torch import nn

from torchkeras_io._engine.keras3 import open_weights, write_module_shards, write_module_weights
from torchkeras_io._engine.plan import LayerNames, Slot, plan
from torchkeras_io._engine.progress import check_compression, progress_bar, tensor_bytes
from torchkeras_io._formats.atomic import atomic_write_path
from torchkeras_io._formats.keras3 import chosen_format
from torchkeras_io._formats.legacy_h5 import LayerRecord, write_weights_group
from torchkeras_io._layers import FileInfo
from torchkeras_io._tensors import Transfer
from torchkeras_io._version import __version__
from torchkeras_io.errors import (
    FileFormatError,
    TorchKerasIOError,
    TorchKerasIOWarning,
    WeightMismatchError,
    _h5_errors,
)

Device = Union[str, torch.device, None]


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """A layer that was not loaded because the file's weights do not fit it."""

    layer: str
    weight: str  # the Keras weight name, or "<count>" when the number of weights differs
    file_shape: tuple
    module_shape: tuple

    def __str__(self) -> str:
        if self.weight == "<count>":
            return f"{self.layer}: file has {self.file_shape[0]} weight(s), module expects {self.module_shape[0]}"
        return f"{self.layer}/{self.weight}: file {self.file_shape} vs module {self.module_shape}"


@dataclasses.dataclass
class LoadReport:
    """What :func:`load_weights` did, in the spirit of ``nn.Module.load_state_dict``'s result.

    ``loaded``: module layers that received weights. ``missing``: module layers the file does
    not have (left untouched). ``unexpected``: file layers with weights that were not used.
    ``mismatched``: weights whose count or shape did not fit (their layers were left untouched).
    """

    filepath: str
    loaded: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)
    unexpected: list = dataclasses.field(default_factory=list)
    mismatched: list = dataclasses.field(default_factory=list)

    @property
    def all_loaded(self) -> bool:
        """True when every layer of the module was loaded and nothing in the file was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        head = (
            f"LoadReport('{self.filepath}'): {len(self.loaded)} loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mismatched"
        )
        rows = [("layer", "status", "detail")]
        rows += [(name, "loaded", "") for name in self.loaded]
        rows += [
            (
                m.layer,
                "mismatched",
                str(m).split(": ", 1)[-1]
                if m.weight == "<count>"
                else f"{m.weight}: file {m.file_shape} vs module {m.module_shape}",
            )
            for m in self.mismatched
        ]
        rows += [(name, "missing", "not in file; left as it was") for name in self.missing]
        rows += [(name, "unexpected", "in file; not used") for name in self.unexpected]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [head] + ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ save
def save_weights(
    module: nn.Module,
    filepath: Union[str, os.PathLike],
    *,
    overwrite: bool = True,
    layer_names: LayerNames = None,
    format: Optional[str] = None,
    max_shard_size: Optional[float] = None,
    compression: Optional[str] = None,
    compression_opts: Optional[int] = None,
    progress: Optional[bool] = None,
) -> None:
    """Save the parameters and buffers of ``module`` as a Keras weights file.

    The layout follows the name as in Keras 3: ``*.weights.h5`` is Keras 3's variable store
    (``layers/<snake_class>/vars/<i>``), any other name the legacy HDF5 layout; ``format="keras"``
    or ``format="h5"`` chooses explicitly. ``*.weights.json`` (or ``max_shard_size``, in GB, as in
    Keras 3) writes Keras 3's sharded form: the JSON index and ``<stem>_00000.weights.h5``, ….

    Each module that owns tensors becomes a Keras layer named by its module path (or by
    ``layer_names``: a dict ``{module_path: keras_name}`` or a callable). Known module types use
    Keras's own layouts, so ``keras_model.load_weights(filepath)`` reads the file. The write is
    atomic; ``overwrite=False`` on an existing path raises ``FileExistsError``.
    ``compression`` (legacy layout): None, ``"gzip"`` (level ``compression_opts``, 0-9, default 4)
    or ``"lzf"``, HDF5 filters every Keras reads. ``progress`` (legacy layout): a tqdm bar on
    stderr (True; needs tqdm), none (False), or one from 1 GiB when stderr is a terminal (None).
    """
    gzip_level = check_compression(compression, compression_opts)
    sharded = max_shard_size is not None or os.fspath(filepath).endswith(".weights.json")
    if compression is not None and (sharded or chosen_format(filepath, format, ".weights.h5") != "h5"):
        raise TorchKerasIOError("compression applies to the legacy HDF5 layout (an '.h5' name or format='h5')")
    _check_module(module)
    slots, top = plan(module, layer_names)
    if sharded:
        write_module_shards(os.fspath(filepath), slots, top, 5.0 if max_shard_size is None else max_shard_size,
                            overwrite)  # fmt: skip
        return
    if chosen_format(filepath, format, ".weights.h5") == "keras":
        with atomic_write_path(filepath, overwrite=overwrite) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["torchkeras_io_version"] = __version__
                write_module_weights(f, slots, top, module if layer_names is None else None)
        return
    records = [
        LayerRecord(
            s.name,
            s.layer.weights,
            s.layer.extras,
            {"keras_class": s.layer.class_name, "torch_class": type(s.module).__name__},
        )
        for s in slots
    ]
    top_weights = top.layer.weights if top is not None else ()
    bar = progress_bar(progress, tensor_bytes(records, top_weights), "save_weights")
    try:
        with atomic_write_path(filepath, overwrite=overwrite) as tmp:
            with h5py.File(tmp, "w") as f:
                f.attrs["torchkeras_io_version"] = __version__
                write_weights_group(
                    f, records, top_weights, compression=compression, gzip_level=gzip_level, progress=bar.update
                )
    finally:
        bar.close()


# ------------------------------------------------------------------------------------------ load
def _check_module(module) -> None:
    if not isinstance(module, nn.Module):
        raise TorchKerasIOError(f"expected an nn.Module, got {type(module).__name__}")
    for name, p in module.named_parameters():
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise TorchKerasIOError(f"parameter '{name}' is uninitialized (a Lazy module): run one forward pass first")


def _fit(slot: Slot, file_layer, info: FileInfo, reshape: bool):
    """(canonical weights ready to load, mismatches). Reads no tensor data."""
    weights, extras = slot.adapter.normalize(
        slot.module, slot.index, list(file_layer.weights), dict(file_layer.extras), info
    )
    spec = slot.layer.weights
    if len(weights) != len(spec):
        return None, extras, [Mismatch(slot.name, "<count>", (len(weights),), (len(spec),))]
    fitted, bad = [], []
    for have, want in zip(weights, spec):
        if have.shape == want.shape:
            fitted.append(have)
        elif reshape and have.numel() == want.numel():
            fitted.append(have.map(lambda a, s=want.shape: a.reshape(s), want.shape))
        else:
            bad.append(Mismatch(slot.name, want.name, have.shape, want.shape))
    return (None if bad else fitted), extras, bad


def _target(module: nn.Module, name: str) -> torch.Tensor:
    owner_path, _, attr = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    t = getattr(owner, attr, None)
    if not isinstance(t, torch.Tensor):  # pragma: no cover - adapters name existing tensors
        raise TorchKerasIOError(f"module has no tensor '{name}'")
    return t


def load_weights(
    module: nn.Module,
    filepath: Union[str, os.PathLike],
    *,
    by_name: bool = False,
    skip_mismatch: bool = False,
    reshape: bool = False,
    device: Device = None,
    layer_names: LayerNames = None,
    allow_nonfinite: bool = True,
    progress: Optional[bool] = None,
) -> LoadReport:
    """Load a Keras weights file (or a model file's weights) into ``module``.

    Legacy HDF5, Keras 3 ``.weights.h5``, ``.keras`` archives and sharded ``.weights.json`` are told
    apart by their bytes. In a Keras 3 store, layers are matched by Keras 3's paths
    (``layers/dense_1``) when the module's layers give the same ones, else in the file's order
    (ours) or by the ``vars`` ``name`` attribute with ``by_name=True``.

    ``by_name=False`` pairs the module's layers with the file's layers that have weights, in
    order (Keras's topological loading); ``by_name=True`` pairs them by Keras layer name and
    leaves the others untouched. A layer whose weight count or shapes differ raises
    :class:`WeightMismatchError`, or with ``skip_mismatch=True`` is skipped with a warning;
    ``reshape=True`` reshapes a weight whose element count matches. Every shape is checked before
    anything is written, so a failed load leaves the module as it was. ``device`` moves the module
    first; otherwise each tensor lands on the device its parameter lives on. NaN and Inf load as
    they are; ``allow_nonfinite=False`` refuses them with a :class:`FileFormatError` naming the
    layer and weight. A failure while reading data (a corrupt or truncated file) restores every
    tensor already written: the module is left as it was. ``progress``: as for :func:`save_weights`.
    """
    _check_module(module)
    if device is not None:
        module.to(device)
    slots, top = plan(module, layer_names)
    filepath = os.fspath(filepath)
    # legacy HDF5, .weights.h5, .weights.json or .keras: told apart by their bytes
    with _h5_errors(filepath), open_weights(filepath, slots, module=module) as reader:
        info = FileInfo(filepath, reader.keras_version, reader.backend)
        report = LoadReport(filepath)
        file_layers = {name: reader.layer(name) for name in reader.layer_names}
        file_layers = _check_keras_pairing(module, reader, file_layers, filepath, by_name)
        pairs = _pair(slots, file_layers, by_name, report, filepath)
        file_top = reader.top_level()
        if top is not None and file_top is not None and file_top.weights:
            pairs.append((top, file_top))
        elif top is not None:
            report.missing.append(top.name)
        elif file_top is not None and file_top.weights:
            if not by_name:
                raise WeightMismatchError(
                    f"the file has {len(file_top.weights)} top-level model weight(s) and the module has none",
                    filepath=filepath,
                    layer="top_level_model_weights",
                )
            report.unexpected.append("top_level_model_weights")

        assignments = []
        for slot, file_layer in pairs:
            fitted, extras, bad = _fit(slot, file_layer, info, reshape)
            if bad:
                if not skip_mismatch:
                    m = bad[0]
                    raise WeightMismatchError(
                        f"{m} (file layer '{file_layer.name}', module '{slot.label}'). Pass skip_mismatch=True to "
                        "skip such layers"
                        + ("" if m.weight == "<count>" else ", or reshape=True if only the shape differs"),
                        filepath=filepath,
                        layer=slot.name,
                        weight=None if m.weight == "<count>" else m.weight,
                    )
                warnings.warn(
                    f"{filepath}: skipping layer '{slot.name}': " + "; ".join(map(str, bad)),
                    TorchKerasIOWarning,
                    stacklevel=2,
                )
                report.mismatched.extend(bad)
                continue
            for name, lazy in slot.adapter.load(slot.module, slot.index, fitted, extras).items():
                target = _target(slot.module, name)
                if tuple(target.shape) != lazy.shape:
                    raise WeightMismatchError(
                        f"converted shape {lazy.shape} does not fit torch tensor '{name}' {tuple(target.shape)}",
                        filepath=filepath,
                        layer=slot.name,
                    )
                assignments.append((target, lazy, slot.name))
            report.loaded.append(slot.name)

        bar = progress_bar(progress, sum(x.numel() * x.dtype.itemsize for _, x, _ in assignments), "load_weights")
        try:
            with torch.no_grad(), Transfer() as transfer:
                _apply(assignments, transfer, allow_nonfinite, filepath, bar.update)
        finally:
            bar.close()
        # let go of the file's objects before it closes: closing a file that still has thousands
        # of open datasets costs more than the load
        del assignments, pairs, file_layers, file_top
    return report


def _apply(assignments: list, transfer: Transfer, allow_nonfinite: bool, filepath: str, advance=None) -> None:
    """Read every weight into its tensor: all of the file or nothing.

    A weight whose read could still fail on the file's contents (compressed or filtered data, a
    value computed from several stored tensors, a NaN/Inf check) is read once to prove it, and
    dropped, before the module changes: stored data block by block through the transfer buffer,
    a computed value into a scratch tensor of its own. Plain storage whose place in the file was
    checked up front (``prechecked``) cannot fail on the file's contents and is read once. So
    extra memory stays a block (or one computed tensor), never a copy of the model, at the cost
    of reading those weights twice; only an I/O error of the disk itself could interrupt the
    second pass."""
    for target, lazy, layer in assignments:
        if allow_nonfinite and _prechecked(lazy):
            continue

        def check(values: torch.Tensor, lazy=lazy, layer=layer) -> None:
            if not allow_nonfinite and values.is_floating_point() and not bool(torch.isfinite(values).all()):
                bad = int((~torch.isfinite(values)).sum())
                raise FileFormatError(f"{bad} NaN/Inf value(s) and allow_nonfinite=False", filepath=filepath,
                                      layer=layer, weight=lazy.name)  # fmt: skip

        if not lazy.scan(check, transfer):
            trial = torch.empty_like(target)
            lazy.read_into(trial, transfer)
            check(trial)
            del trial
    for target, lazy, _ in assignments:
        lazy.read_into(target, transfer)
        if advance is not None:
            advance(lazy.numel() * lazy.dtype.itemsize)


def _prechecked(lazy) -> bool:
    view = lazy.strided()
    return view is not None and getattr(view.root, "prechecked", False)


def _swaps(expected: list, found: list, file_layers: dict) -> str:
    """The first few layers that positional pairing gives another layer's weights, with their shapes."""
    out = []
    for want, got in zip(expected, found):
        if want != got and len(out) < 3:
            a = [tuple(w.shape) for w in file_layers[want].weights] if want in file_layers else None
            b = [tuple(w.shape) for w in file_layers[got].weights]
            same = "same shapes: a silent swap" if a == b else f"shapes {b} for {a}"
            out.append(f"'{want}' would get the weights of '{got}' ({same})")
    return "; ".join(out)


def _check_keras_pairing(module: nn.Module, reader, file_layers: dict, filepath: str, by_name: bool = True) -> dict:
    """Warn about a file that Keras would load into the wrong layers; the file's layers, by name.

    tf-keras and Keras 3 pair a legacy file's weight groups with ``model.layers`` by position, and
    ``model.layers`` of a model rebuilt from a config is Keras's own depth sort of the graph
    (:mod:`._keras.order`). Keras always writes ``layer_names`` in that order; a file written in
    another order (older torchkeras_io versions wrote their configs' order) loads with weights in
    the wrong layers (shape errors, or same-shaped layers silently swapped). Our load pairs by name.
    A ``.keras`` archive pairs by store path (``layers/conv2d_1``), numbered in that same order; an
    archive we wrote numbered in another order still names each layer in its store, and is read
    by those names."""
    from torchkeras_io._engine.keras3 import V3WeightsReader
    from torchkeras_io._formats.legacy_h5 import WeightsReader
    from torchkeras_io._keras.order import layer_order

    if isinstance(reader, V3WeightsReader):
        return _renamed_by_store(reader, file_layers, filepath)
    config = getattr(module, "keras_config", None)
    if not isinstance(reader, WeightsReader) or not isinstance(config, dict):
        return file_layers
    found = [name for name, layer in file_layers.items() if layer.weights]
    try:
        expected = [name for name in layer_order(config, "tf_keras") if name in set(found)]
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RecursionError):
        return file_layers  # a config Keras cannot rebuild: the builder has already said so, or will
    if expected == found or set(expected) != set(found):
        return file_layers
    warnings.warn(f"{filepath}: Keras pairs this file's weight groups with its layers by position, in an order the "
                  f"file does not follow, so tf-keras and Keras 3 would load it wrongly: "
                  f"{_swaps(expected, found, file_layers)}. "
                  + ("torchkeras_io loads it by name (correctly)" if by_name else "This load pairs them in the "
                     "module's own order") + "; save it again with torchkeras_io.save_model for a file Keras loads",
                  TorchKerasIOWarning, stacklevel=3)  # fmt: skip
    return file_layers


def _renamed_by_store(reader, file_layers: dict, filepath: str) -> dict:
    """A Keras 3 store whose layers carry the names their writer gave them (ours do), where Keras 3's
    path numbering gives some of them another layer's name: warn, and use the stored names."""
    stored = {}
    for name, layer in file_layers.items():
        path = layer.attrs.get("v3_path")
        own = reader.objects.get(path) if path is not None else None
        stored[name] = own.name if own is not None and own.name else None
    weighted = [name for name, layer in file_layers.items() if layer.weights]
    moved = [name for name in weighted if stored[name] not in (None, name)]
    if not moved or None in (stored[n] for n in weighted) or {stored[n] for n in weighted} != set(weighted):
        return file_layers  # names missing, or not a reordering of the same layers: nothing to go on
    shapes = {name: [tuple(w.shape) for w in file_layers[name].weights] for name in weighted}
    detail = "; ".join(f"'{n}' would get the weights saved for '{stored[n]}' "
                       f"({'same shapes: a silent swap' if shapes[n] == shapes[stored[n]] else 'other shapes'})"
                       for n in moved[:3])  # fmt: skip
    warnings.warn(f"{filepath}: Keras 3 pairs this archive's weights with its layers by store path, numbered in an "
                  f"order the file does not follow, so Keras 3 would load it wrongly: {detail}. torchkeras_io "
                  "loads it by the names stored with the weights; save it again with torchkeras_io.save_model for "
                  "a file Keras 3 loads", TorchKerasIOWarning, stacklevel=4)  # fmt: skip
    out = {}
    for name, layer in file_layers.items():
        new = stored[name] if name in set(weighted) else name
        out[new] = dataclasses.replace(layer, name=new)
    return out


def _pair(slots, file_layers: dict, by_name: bool, report: LoadReport, filepath: str):
    weighted = [layer for layer in file_layers.values() if layer.weights]
    if by_name:
        used = set()
        pairs = []
        for slot in slots:
            # module paths have dots; Keras 3 layer names can't (exported models use '_')
            layer = file_layers.get(slot.name) or file_layers.get(slot.name.replace(".", "_"))
            if layer is None or not layer.weights:
                report.missing.append(slot.name)
            else:
                pairs.append((slot, layer))
                used.add(layer.name)
        report.unexpected.extend(layer.name for layer in weighted if layer.name not in used)
        return pairs
    if len(weighted) != len(slots):
        raise WeightMismatchError(
            f"layer count mismatch: the module has {len(slots)} layers with weights "
            f"({', '.join(s.name for s in slots[:8])}{', …' if len(slots) > 8 else ''}), the file has "
            f"{len(weighted)} ({', '.join(x.name for x in weighted[:8])}{', …' if len(weighted) > 8 else ''}). "
            "Use by_name=True to load matching layers only",
            filepath=filepath,
        )
    names = [s.name.replace(".", "_") for s in slots]
    found = [layer.name.replace(".", "_") for layer in weighted]
    if names != found and sorted(names) == sorted(found):
        # the file names exactly the module's layers, in another order: pairing by position would put
        # one layer's weights into another (silently, where shapes agree)
        by_key = {layer.name.replace(".", "_"): layer for layer in weighted}
        raise WeightMismatchError(
            f"the file holds the module's layers in another order, so pairing them by position would load "
            f"{_swaps(names, found, by_key)}. Use by_name=True to pair them by name",
            filepath=filepath,
        )
    return list(zip(slots, weighted))
