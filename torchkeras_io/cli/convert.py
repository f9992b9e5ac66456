"""``torchkeras-io convert IN OUT``: the output format chosen by OUT's extension.

Files with an architecture are rebuilt through the public API (:func:`torchkeras_io.load_model`)
and written by it; weights-only files are copied weight by weight, under their Keras names."""

from __future__ import annotations

import contextlib
import json
import os
import sys

import torchkeras_io as tkio
from torchkeras_io._checkpoint.records import Checkpoint, LayerWeights
from torchkeras_io._checkpoint.writer import write_checkpoint
from torchkeras_io._formats import flat
from torchkeras_io._formats.detect import Format
from torchkeras_io._formats.legacy_h5 import EXTRA_GROUP
from torchkeras_io._tensors import Lazy
from torchkeras_io.cli.common import EXIT_OK, UsageError, one_line
from torchkeras_io.cli.contents import FLAT, FORMATS, V3_STORES, Contents, read_contents, short_name
from torchkeras_io.errors import FileFormatError, TorchKerasIOError

OUT_EXTENSIONS = (  # longest first: ".weights.h5" before ".h5"
    (".weights.h5", "weights-h5"),
    (".weights.json", "weights-h5"),  # the sharded form: the library picks it by this name
    (".keras", "keras"),
    (".h5", "h5"),
    (".hdf5", "h5"),
    (".safetensors", "safetensors"),
    (".pt", "torch"),
    (".pth", "torch"),
    (".bin", "torch"),
)

HELP = """\
The output format comes from OUT's extension:
  .h5 / .hdf5      legacy Keras HDF5: a full model (architecture, weights, and the training
                   config and optimizer state unless --no-optimizer) when IN has an
                   architecture (--weights-only: a weights file), else a weights file from a
                   legacy weights file or from <layer>/<weight> names (what this command writes
                   for weights-only files)
  .keras           Keras 3 archive, as above (needs an IN with an architecture)
  .weights.h5      Keras 3 weights (needs an IN with an architecture: Keras 3 stores
                   variables by the model's structure, not by name)
  .safetensors     the torch state_dict of the model rebuilt from IN (torch names such as
  .pt .pth .bin    layers.dense.weight), or, for a weights-only IN (or with --keras-names), the
                   file's weights as stored, under Keras names <layer>/<weight> (kernel:0 -> kernel)

What is not possible here: safetensors / state_dict files with torch names -> Keras. Mapping
torch names to Keras layers needs the module's Python code, which this tool never imports. In
Python: module.load_state_dict(torch.load(...)); torchkeras_io.save_weights(module, "out.h5").

examples:
  torchkeras-io convert model.h5 model.safetensors     # torch names, loads with load_state_dict
  torchkeras-io convert weights.h5 weights.safetensors # Keras names, converts back to .h5
  torchkeras-io convert model.h5 model.keras
"""


def register(sub, epilog: str, formatter) -> None:
    s = sub.add_parser("convert", help="convert between formats, chosen by the output file's extension",
                       description=HELP, epilog=epilog, formatter_class=formatter)  # fmt: skip
    s.add_argument("input", metavar="IN")
    s.add_argument("output", metavar="OUT")
    s.add_argument("-f", "--force", action="store_true", help="replace OUT if it exists")
    s.add_argument("--weights-only", action="store_true", help=".h5 output: write a weights file, not a full model")
    s.add_argument("--keras-names", action="store_true",
                   help="safetensors/state_dict output: the file's weights as stored, named <layer>/<weight>, even "
                   "when IN has an architecture")  # fmt: skip
    s.add_argument("--no-optimizer", action="store_true",
                   help="full-model output: leave the training config and optimizer state out")  # fmt: skip
    s.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    s.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    """``convert IN OUT``: the format chosen by OUT's extension (see ``convert --help``)."""
    src, dst = os.fspath(args.input), os.fspath(args.output)
    kind = _out_kind(dst)
    if os.path.exists(dst) and os.path.samefile(src, dst):
        raise UsageError("input and output are the same file")
    if os.path.exists(dst) and not args.force:
        raise UsageError(f"'{dst}' exists: pass --force to replace it")
    with contextlib.ExitStack() as stack:
        c = read_contents(src, stack)
        if kind in FLAT:
            what = _to_flat(c, src, dst, kind, args)
        elif kind == "h5":
            what = _to_legacy(c, src, dst, args)
        else:
            what = _to_keras3(c, src, dst, kind, args)
    if not args.quiet:
        print(f"wrote {dst}: {what}, from {FORMATS[c.format]} '{src}'")
    return EXIT_OK


def _out_kind(path: str) -> str:
    low = path.lower()
    for ext, kind in OUT_EXTENSIONS:
        if low.endswith(ext):
            return kind
    raise UsageError(f"cannot tell the output format from '{path}': use one of "
                     + ", ".join(ext for ext, _ in OUT_EXTENSIONS))  # fmt: skip


def _to_flat(c: Contents, src: str, dst: str, kind: str, args) -> str:
    if c.has_architecture and not args.keras_names:
        model = tkio.load_model(src, compile=False)
        _write_flat(model.module.state_dict(), dst, kind, {flat.NAMES_KEY: "torch"}, args.force)
        return "the model's torch state_dict"
    if c.format in FLAT:
        sep = "/" if c.names == "keras" else "."  # the names as they were split on reading
        tensors = {f"{layer.name}{sep}{w.name}" if layer.name else w.name: w.read()
                   for layer in c.layers for w in layer.weights}  # fmt: skip
        layout = [[layer.name, [w.name for w in layer.weights]] for layer in c.layers]
        meta = {flat.NAMES_KEY: c.names or "torch"}
        if c.names == "keras":
            meta[flat.LAYOUT_KEY] = json.dumps(layout)
        _write_flat(tensors, dst, kind, meta, args.force)
        return "the same tensors"
    named = _keras_named(c)
    tensors = {f"{lname}/{wname}": w.read() for lname, ws in named for wname, w in ws}
    layout = [[lname, [wname for wname, _ in ws]] for lname, ws in named]
    if len(tensors) != sum(len(ws) for _, ws in named):
        raise FileFormatError("two weights share a <layer>/<weight> name", filepath=src)
    meta = {flat.NAMES_KEY: "keras", flat.LAYOUT_KEY: json.dumps(layout), "source_format": c.format}
    _write_flat(tensors, dst, kind, meta, args.force)
    return "the file's weights under Keras names <layer>/<weight>"


def _to_legacy(c: Contents, src: str, dst: str, args) -> str:
    if c.has_architecture:
        model = _load_for_saving(src, args.no_optimizer)
        if args.weights_only:
            model.save_weights(dst)
            return "the model's weights (legacy HDF5 weights file)"
        tkio.save_model(model, dst)
        return "the model (legacy HDF5 full-model file)"
    if c.format in FLAT and c.names != "keras":
        raise UsageError(
            f"'{src}' holds torch state_dict names; writing Keras weights from them needs the module's "
            "Python code, which a command line cannot import. In Python: module.load_state_dict(...); "
            f"torchkeras_io.save_weights(module, '{dst}')"
        )
    if c.format in V3_STORES or c.extra.get("metadata", {}).get("source_format") in V3_STORES:
        raise UsageError("a Keras 3 .weights.h5 file has no weight names and no architecture; converting "
                         "it to the legacy layout needs the model: load it into a Keras model and call "
                         "save_weights, or convert the .keras file instead")  # fmt: skip
    write_checkpoint(dst, _legacy_weights(_keras_named(c)), overwrite=args.force, progress=False)
    return "the weights (legacy HDF5 weights file)"


def _to_keras3(c: Contents, src: str, dst: str, kind: str, args) -> str:
    if not c.has_architecture:
        raise UsageError(f"'{src}' has no architecture; a Keras 3 file needs one. Convert a full-model "
                         "file, or save from Python with torchkeras_io.save_weights(module, ...)")  # fmt: skip
    model = _load_for_saving(src, args.no_optimizer)
    if kind == "keras":
        tkio.save_model(model, dst)
        return "the model (Keras 3 .keras archive)"
    tkio.save_weights(model.module, dst, layer_names=model.keras_layer_names)
    return "the model's weights (Keras 3 .weights.h5)"


def _keras_named(c: Contents) -> list:
    """``[(layer, [(weight name, Weight)])]`` with short Keras weight names (``kernel``)."""
    return [(layer.name, [(short_name(w.name, layer.name), w) for w in layer.weights]) for layer in c.layers]


def _write_flat(tensors: dict, out: str, kind: str, metadata: dict, force: bool) -> None:
    try:
        if kind == "safetensors":
            flat.write_safetensors(out, tensors, metadata, overwrite=force)
        else:
            flat.write_torch(out, tensors, overwrite=force)
    except ImportError as exc:  # the optional safetensors package
        raise UsageError(str(exc)) from exc


def _load_for_saving(src: str, no_optimizer: bool):
    """The model with its optimizer, loss and metrics where they can be rebuilt, so they are written too."""
    if not no_optimizer:
        try:
            return tkio.load_model(src, compile=True)
        except TorchKerasIOError as exc:
            print(f"torchkeras-io: warning: training state not converted ({one_line(exc)})", file=sys.stderr)
    return tkio.load_model(src, compile=False)


def _legacy_weights(named: list) -> Checkpoint:
    """A legacy weights file of ``[(layer, [(weight name, Weight)])]``, read into memory."""
    extra = f"{EXTRA_GROUP}/"  # torch-only state (num_batches_tracked, ...) goes back where Keras ignores it
    records = [
        LayerWeights(
            lname,
            [Lazy.of(wname, w.read()) for wname, w in ws if not wname.startswith(extra)],
            {wname[len(extra) :]: Lazy.of(wname[len(extra) :], w.read()) for wname, w in ws if wname.startswith(extra)},
        )
        for lname, ws in named
    ]
    return Checkpoint(Format.LEGACY_WEIGHTS, records)
