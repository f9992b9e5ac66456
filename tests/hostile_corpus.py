"""The hostile corpus: mutations of real checkpoints, run case by case in a worker process.

Run as a script by ``test_hostile_files.py`` (``python tests/hostile_corpus.py WORK SEED FAMILIES``),
it prints one JSON line per case. Sources: files this library writes (weights-only and full-model
with optimizer state) and a few real Keras files of ``../shared/corpus``. Mutations: truncation at
many offsets, bit flips, missing and swapped groups and attributes, wrong dtypes and shapes, shapes
claiming terabytes, NaN/Inf, configs nested thousands deep or megabytes long, soft/external links,
external and virtual storage, layer names with ``/``, ``..`` or NUL, class names pointing at
importable Python objects, and Lambda layers holding bytecode or eval-able strings.

Each case runs under an alarm, the whole worker under an address-space limit; a case is "bad" when
it ends in an exception other than a :class:`TorchKerasIOError` subclass, hangs, grows memory,
runs code from the file (a probe module leaves a sentinel file when imported or called) or leaves a
module partly modified. The helpers ``our_model``, ``module_state``, ``same_state`` and
:func:`gheap_would_hang` are shared with the in-process hostile tests and ``test_fuzz.py``.
"""

from __future__ import annotations

import base64
import json
import pathlib
import random
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "corpus"
CASE_SECONDS = 10  # per case: a hang past this is a failure
MEMORY_HEADROOM = 3 << 30  # address space the worker may grow by (a "terabyte" allocation fails)
RSS_GROWTH_LIMIT = 512 << 20  # per case, resident memory growth beyond this is a blow-up
PROBE = "tkio_hostile_probe"
# real Keras files: (file, entry point): full models go through load_model, weights-only files with
# a known architecture through model_from_json + load_weights
CORPUS_FILES = [
    ("20Tsthurman__WKU-Chatbot__chatbot_model.h5", "model"),  # tf.keras 2.15, optimizer state
    ("iurykrieger__time-series-autoencoder__autoencoder.h5", "model"),  # tf.keras 2.1, LSTM, optimizer
    ("Abdullah-Mehtab__AI-Powered-University-Admissions-Chatbot__chatbot_model.h5", "model"),  # Keras 3
    ("andreww__keras_play__denoising_autoencoder.h5", "arch"),  # weights-only + architecture
]
LAMBDA_FILE = "1560800__CarND-Behavioral-Cloning-P3__model.h5"  # a real Lambda with bytecode


def gheap_would_hang(data: bytes) -> bool:
    """True when a global heap collection in ``data`` holds an object that libhdf5's collection
    parser never steps past (H5HG__cache_heap_deserialize: an object of index 0 and size 0, or a
    size that wraps the pointer back). Reading any variable-length value of such a file loops
    forever inside libhdf5 (1.14.6, h5py 3.14), where no Python-level timeout can interrupt it:
    a known limit of this package (SECURITY.md), so the mutation tests leave such mutations out."""
    start = 0
    while (i := data.find(b"GCOL", start)) >= 0:
        start = i + 4
        if len(data) < i + 16 or data[i + 4] != 1:
            continue
        end = i + max(int.from_bytes(data[i + 8 : i + 16], "little"), 4096)
        p, seen = i + 16, set()
        while p < end and p + 16 <= end:
            if p in seen or p < i:
                return True
            seen.add(p)
            if p + 16 > len(data):
                break
            idx = int.from_bytes(data[p : p + 2], "little")
            size = int.from_bytes(data[p + 8 : p + 16], "little")
            need = size if idx == 0 else (16 + ((size + 7) & ~7)) % 2**64
            if need == 0:
                return True
            p = p + need if need < 2**63 else p + need - 2**64
    return False


class Case:
    """One hostile input. ``kind``: weights (load_weights into ``module()``), model (load_model,
    compile False and True), json / yaml (model_from_json / model_from_yaml of ``text``)."""

    def __init__(self, family, name, kind, path=None, text=None, module=None, expect="either", check=None, **kw):
        self.family, self.name, self.kind = family, name, kind
        self.path, self.text, self.module = path, text, module
        self.expect = expect  # "error", "ok" or "either"
        self.check = check  # extra check of the result (loaded module / error)
        self.kw = kw


def _probe_module(directory: pathlib.Path, sentinel: pathlib.Path) -> None:
    """A module that, imported or called in any way, leaves ``sentinel`` behind."""
    (directory / f"{PROBE}.py").write_text(
        "import pathlib\n"
        f"pathlib.Path({str(sentinel)!r}).write_text('imported')\n"
        "import torch.nn as nn\n"
        "def evil(*a, **k):\n"
        f"    pathlib.Path({str(sentinel)!r}).write_text('called')\n"
        "class Evil(nn.Module):\n"
        "    def __init__(self, *a, **k):\n"
        "        super().__init__()\n"
        "        evil()\n"
    )


def _payload_code(sentinel: pathlib.Path) -> str:
    return f"__import__('pathlib').Path({str(sentinel)!r}).write_text('eval')"


def _lambda_bytecode(sentinel: pathlib.Path) -> str:
    """Keras 2's Lambda serialisation: base64 of the marshalled code of a function that, run, would
    leave the sentinel (made here, in the test, never in the library)."""
    import marshal

    src = f"lambda x: (__import__('pathlib').Path({str(sentinel)!r}).write_text('bytecode'), x)[1]"
    code = compile(src, "<hostile>", "eval").co_consts[0]
    return base64.b64encode(marshal.dumps(code)).decode("ascii")


# ------------------------------------------------------------------------------- sources
def our_model():
    from torch import nn

    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def _our_rnn():
    from torch import nn

    return nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 5, batch_first=True))


def _sources(work: pathlib.Path) -> list:
    """(name, path, kind, module factory) of the unmutated files."""
    import torch

    import torchkeras_io as tkio

    torch.manual_seed(0)
    out = []
    p = work / "ours_weights.h5"
    tkio.save_weights(our_model(), p)
    out.append(("ours_weights", p, "weights", our_model))
    p = work / "ours_rnn.h5"
    tkio.save_weights(_our_rnn(), p)
    out.append(("ours_rnn", p, "weights", _our_rnn))
    p = work / "ours_model.h5"
    model = our_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 6)).sum().backward()
    opt.step()
    tkio.save_model(model, p, optimizer=opt, loss="mse", metrics=["mae"], input_shape=(6,))
    out.append(("ours_model", p, "model", None))
    if CORPUS.is_dir():
        for name, kind in CORPUS_FILES:
            src = CORPUS / "files" / name
            dst = work / ("corpus_" + name)
            shutil.copyfile(src, dst)
            if kind == "model":
                out.append((name[:24], dst, "model", None))
            else:
                arch = (CORPUS / "arch" / f"{name}.json").read_text()
                out.append((name[:24], dst, "weights", lambda arch=arch: tkio.model_from_json(arch).module))
    return out


_MODULES: dict = {}


def _module_for(path: pathlib.Path):
    """What load_weights loads a full-model file into: the model it holds (rebuilt once from the
    unmutated file, then copied), by name with its Keras layer names."""
    import copy

    import torchkeras_io as tkio

    if path not in _MODULES:
        _MODULES[path] = tkio.load_model(path, compile=False)
    model = _MODULES[path]
    return (lambda: copy.deepcopy(model.module)), {"by_name": True, "layer_names": model.keras_layer_names}


# ------------------------------------------------------------------------------- mutations
def _copy(src: pathlib.Path, work: pathlib.Path, tag: str) -> pathlib.Path:
    dst = work / f"{src.stem}.{tag}.h5"
    shutil.copyfile(src, dst)
    return dst


def byte_cases(work: pathlib.Path, sources: list, rng: random.Random) -> list:
    cases = []
    for name, path, kind, factory in sources:
        data = path.read_bytes()
        n = len(data)
        offsets = sorted({0, 1, 7, 8, 40, 96, 512, 1024, 2048, 4096, n // 2, n - 1, n - 8}
                         | {rng.randrange(n) for _ in range(8)})  # fmt: skip
        for off in offsets:
            if 0 <= off < n and not gheap_would_hang(data[:off]):
                p = work / f"{path.stem}.cut{off}.h5"
                p.write_bytes(data[:off])
                cases.append(Case("truncation", f"{name}@{off}", kind, p, module=factory))
        positions = [rng.randrange(min(n, 4096)) for _ in range(10)] + [rng.randrange(n) for _ in range(10)]
        for i, pos in enumerate(positions):
            flipped = bytearray(data)
            flipped[pos] ^= 1 << rng.randrange(8)
            if i % 3 == 0:  # a few multi-byte bursts too
                for _ in range(8):
                    q = min(n - 1, pos + rng.randrange(64))
                    flipped[q] ^= 1 << rng.randrange(8)
            if gheap_would_hang(bytes(flipped)):
                continue
            p = work / f"{path.stem}.flip{i}.h5"
            p.write_bytes(bytes(flipped))
            cases.append(Case("bitflip", f"{name}#{i}@{pos}", kind, p, module=factory))
    return cases


def _objects(path: pathlib.Path) -> tuple:
    """(groups and datasets, (object, attribute) pairs) of a file, by path."""
    import h5py

    objs, attrs = [], [("/", a) for a in h5py.File(path, "r").attrs]
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            objs.append(name)
            attrs.extend((name, a) for a in obj.attrs)

        f.visititems(visit)
    return objs, attrs


def structure_cases(work: pathlib.Path, sources: list, rng: random.Random) -> list:
    """Missing / swapped groups, datasets and attributes."""
    import h5py

    cases = []
    for name, path, kind, factory in sources:
        objs, attrs = _objects(path)
        for i, obj in enumerate(rng.sample(objs, min(len(objs), 10))):
            p = _copy(path, work, f"del{i}")
            with h5py.File(p, "r+") as f:
                del f[obj]
            cases.append(Case("missing", f"{name}: del {obj}", kind, p, module=factory))
        for i, (obj, attr) in enumerate(rng.sample(attrs, min(len(attrs), 10))):
            p = _copy(path, work, f"delattr{i}")
            with h5py.File(p, "r+") as f:
                del f[obj].attrs[attr]
            cases.append(Case("missing", f"{name}: del {obj}@{attr}", kind, p, module=factory))
        with h5py.File(path, "r") as f:
            groups = [o for o in objs if isinstance(f.get(o), h5py.Group)]
            dsets = [o for o in objs if isinstance(f.get(o), h5py.Dataset)]
        for tag, pool, tries in (("swap", groups, 4), ("swapd", dsets, 3)):
            for i in range(tries if len(pool) >= 2 else 0):
                a, b = rng.sample(pool, 2)
                if a.startswith(b) or b.startswith(a):
                    continue
                p = _copy(path, work, f"{tag}{i}")
                with h5py.File(p, "r+") as f:
                    f.move(a, "__tmp__")
                    f.move(b, a)
                    f.move("__tmp__", b)
                cases.append(Case("swapped", f"{name}: swap {a} <-> {b}", kind, p, module=factory))
        for i, (obj, attr) in enumerate(rng.sample(attrs, min(len(attrs), 4))):
            other = rng.choice(attrs)
            p = _copy(path, work, f"swapattr{i}")
            with h5py.File(p, "r+") as f:
                va, vb = f[obj].attrs[attr], f[other[0]].attrs[other[1]]
                f[obj].attrs[attr], f[other[0]].attrs[other[1]] = vb, va
            cases.append(Case("swapped", f"{name}: swap @{attr} <-> @{other[1]}", kind, p, module=factory))
    return cases


def _first_dataset(path: pathlib.Path, under: str = "") -> str:
    import h5py

    found = []
    with h5py.File(path, "r") as f:
        root = f[under] if under else f
        root.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and not found else None)
    return (under + "/" if under else "") + found[0]


def _weights_under(path: pathlib.Path) -> str:
    import h5py

    with h5py.File(path, "r") as f:
        return "model_weights" if "model_weights" in f else ""


def dtype_shape_cases(work: pathlib.Path, sources: list) -> list:
    """Wrong dtypes and shapes, terabyte shapes, external/virtual storage, links."""
    import h5py
    import numpy as np

    secret = work / "secret.bin"
    secret.write_bytes(b"\x00" * 4096)
    replacements = {
        "string": dict(data=np.array([b"abc", b"def"])),
        "vlen_str": dict(data=np.array(["x"], dtype=h5py.string_dtype())),
        "compound": dict(data=np.zeros(3, dtype=[("a", "f4"), ("b", "i4")])),
        "enum": dict(data=np.zeros(3, dtype=h5py.enum_dtype({"A": 0, "B": 1}, basetype="i1"))),
        "vlen_float": dict(shape=(2,), dtype=h5py.vlen_dtype("f4")),
        "reference": dict(shape=(2,), dtype=h5py.ref_dtype),
        "bool": dict(data=np.ones(3, dtype=bool)),
        "complex": dict(data=np.ones(3, dtype="c8")),
        "float16": dict(data=np.ones(3, dtype="f2")),
        "bigendian": dict(data=np.ones(3, dtype=">f8")),
        "array_dtype": dict(shape=(2,), dtype=np.dtype(("f4", (3,)))),
        "opaque": dict(data=np.zeros(3, dtype="V4")),
        "scalar": dict(data=np.float32(1.0)),
        "empty": dict(data=h5py.Empty("f4")),
        "zero_size": dict(shape=(0, 5), dtype="f4"),
        "rank7": dict(shape=(1, 1, 1, 1, 1, 1, 3), dtype="f4"),
        "terabytes": dict(shape=(2**20, 2**20), dtype="f4"),
        "terabytes_chunked": dict(shape=(2**22, 2**20), dtype="f8", chunks=(1, 1024)),
        "terabytes_compressed": dict(shape=(2**21, 2**20), dtype="f4", chunks=(64, 1024), compression="gzip"),
        "exabytes": dict(shape=(2**31, 2**31, 2**2), dtype="f8", chunks=(1, 1, 4)),
        "external_storage": dict(shape=(4,), dtype="f4", external=[(str(secret), 0, 16)]),
    }
    cases = []
    for name, path, kind, factory in sources:
        if not name.startswith("ours"):
            continue
        target = _first_dataset(path, _weights_under(path))
        for tag, spec in replacements.items():
            p = _copy(path, work, f"dt_{tag}")
            with h5py.File(p, "r+") as f:
                old = f[target]
                attrs = dict(old.attrs)
                del f[target]
                f.create_dataset(target, **spec)
                for k, v in attrs.items():
                    f[target].attrs[k] = v
            cases.append(Case("dtype/shape", f"{name}: {target} as {tag}", kind, p, module=factory))
        # the same shape, a wrong or hostile dtype marker
        for marker in ("bfloat16", "float8_e4m3fn", "os.system", "torch.load", "x" * 100000):
            p = _copy(path, work, f"marker{len(marker)}")
            with h5py.File(p, "r+") as f:
                f[target].attrs["torch_dtype"] = marker
            cases.append(Case("dtype/shape", f"{name}: marker {marker[:20]}", kind, p, module=factory))
        # virtual dataset over another file
        other = work / "vds_source.h5"
        with h5py.File(other, "w") as f:
            f["x"] = np.zeros(f_shape := (64,), "f4")
        p = _copy(path, work, "vds")
        with h5py.File(p, "r+") as f:
            del f[target]
            layout = h5py.VirtualLayout(shape=f_shape, dtype="f4")
            layout[...] = h5py.VirtualSource(str(other), "x", shape=f_shape)
            f.create_virtual_dataset(target, layout)
        cases.append(Case("links", f"{name}: virtual dataset", kind, p, module=factory))
        # links where groups are expected
        group = target.rsplit("/", 2)[0] if target.count("/") >= 2 else target.rsplit("/", 1)[0]
        for tag in ("soft_group", "external_group", "loop", "soft_root"):
            p = _copy(path, work, tag)
            with h5py.File(p, "r+") as f:
                if tag == "soft_group":
                    f.move(group, group + "_real")
                    f[group] = h5py.SoftLink("/" + group + "_real")
                elif tag == "external_group":
                    f.move(group, group + "_real")
                    f[group] = h5py.ExternalLink(str(path), "/" + group)
                elif tag == "loop":
                    f[group + "/loop"] = f[group]  # a hard link cycle
                    f[group].attrs["weight_names"] = [b"loop/loop/loop/kernel:0"]
                else:
                    f[group + "/up"] = h5py.SoftLink("/")
                    f[group].attrs["weight_names"] = [b"up/" + target.encode()]
            cases.append(Case("links", f"{name}: {tag} at {group}", kind, p, module=factory))
    return cases


def nonfinite_cases(work: pathlib.Path, sources: list) -> list:
    import h5py
    import numpy as np
    import torch

    cases = []
    for name, path, kind, factory in sources:
        if name != "ours_weights":
            continue
        target = _first_dataset(path)
        for value in (np.nan, np.inf, -np.inf):
            p = _copy(path, work, f"nf{value}")
            with h5py.File(p, "r+") as f:
                f[target][(0,) * f[target].ndim] = value

            def faithful(module, value=value):
                got = torch.cat([t.detach().flatten() for t in module[0].parameters()])
                bad = got[~torch.isfinite(got)]
                assert bad.numel() == 1 and (np.isnan(value) and bad.isnan().all() or bad.item() == value), got

            def refused(err):
                assert isinstance(err, __import__("torchkeras_io").FileFormatError), err
                assert err.layer == "0" and err.weight and "NaN/Inf" in str(err), err

            cases.append(Case("nonfinite", f"{name}: {value} loads", kind, p, module=factory, expect="ok",
                              check=faithful))  # fmt: skip
            cases.append(Case("nonfinite", f"{name}: {value} refused", kind, p, module=factory, expect="error",
                              check=refused, allow_nonfinite=False))  # fmt: skip
    return cases


def name_cases(work: pathlib.Path, sources: list) -> list:
    """Layer and weight names with '/', '..', NUL, megabytes long; attribute lists huge."""
    import h5py
    import numpy as np

    cases = []
    for name, path, kind, factory in sources:
        if name not in ("ours_weights", "ours_model"):
            continue
        under = _weights_under(path)
        for tag, names in {
            "dotdot": [b"../0", b"1", b"3"],
            "dot": [b".", b"1", b"3"],
            "slash_abs": [b"/model_weights/0", b"1", b"3"],
            "slash_mid": [b"0/0", b"1", b"3"],
            "empty": [b"", b"1", b"3"],
            "long": [b"x" * 60000],
            "many": [f"l{i}".encode() for i in range(20000)],
            "utf8_bad": [b"\xff\xfe", b"1", b"3"],
        }.items():
            p = _copy(path, work, f"names_{tag}")
            with h5py.File(p, "r+") as f:
                g = f[under] if under else f
                for k in [k for k in g.attrs if k.startswith("layer_names")]:
                    del g.attrs[k]
                if tag == "many":
                    for i, chunk in enumerate(np.array_split(np.array(names), 8)):
                        g.attrs[f"layer_names{i}"] = chunk
                else:
                    g.attrs["layer_names"] = np.array(names)  # fixed-length, as Keras writes them
            cases.append(Case("names", f"{name}: layer_names {tag}", kind, p, module=factory, expect="error"))
        # NUL: fixed-length HDF5 strings end at the first NUL, so "0\0evil" *is* the name "0"
        p = _copy(path, work, "names_nul")
        with h5py.File(p, "r+") as f:
            g = f[under] if under else f
            names = [n if isinstance(n, bytes) else n.encode() for n in np.asarray(g.attrs["layer_names"]).tolist()]
            g.attrs["layer_names"] = np.array([names[0] + b"\x00evil"] + names[1:])
        cases.append(Case("names", f"{name}: layer_names with NUL", kind, p, module=factory, expect="ok"))
        group = (under + "/" if under else "") + "0"
        for tag, wn in {
            "dotdot": [b"../1/1/kernel:0"],
            "nul": [b"0/kernel\x00:0"],
            "abs": [b"/0/0/kernel:0"],
            "long": [b"k" * 60000],
            "numbers": np.arange(3.0),
            "nested_list": np.array([[b"a", b"b"], [b"c", b"d"]]),
        }.items():
            p = _copy(path, work, f"wn_{tag}")
            with h5py.File(p, "r+") as f:
                f[group].attrs["weight_names"] = np.asarray(wn)
            cases.append(Case("names", f"{name}: weight_names {tag}", kind, p, module=factory, expect="error"))
        # groups nested 2000 deep, the weight at the bottom (a path of 4000 bytes): walked, not recursed
        p = _copy(path, work, "deep_groups")
        with h5py.File(p, "r+") as f:
            deep = "/".join(["d"] * 2000)
            f.create_group(f"{group}/{deep}").create_dataset("kernel:0", data=np.zeros((6, 8), "f4"))
            f[group].attrs["weight_names"] = np.array([f"{deep}/kernel:0".encode()])
        cases.append(Case("names", f"{name}: weight 2000 groups deep", kind, p, module=factory))
    return cases


# ------------------------------------------------------------------------------- configs
def _deep_json(depth: int, leaf: str = "1", kind: str = "list") -> str:
    if kind == "list":
        return "[" * depth + leaf + "]" * depth
    return '{"a":' * depth + leaf + "}" * depth


def config_texts(sentinel: pathlib.Path, base_config: dict) -> list:
    """(name, JSON-or-YAML text, is_yaml, expect) hostile model configs."""
    payload = _payload_code(sentinel)
    out = []
    for depth in (100, 900, 5000, 100000):
        for kind in ("list", "dict"):
            out.append((f"deep {kind} {depth}", _deep_json(depth, kind=kind), False, "error"))
            nested = json.loads(json.dumps(base_config))
            inner = _deep_json(depth, kind=kind)
            text = json.dumps(nested).replace('"trainable": true', f'"trainable": {inner}', 1)
            out.append((f"deep {kind} {depth} in layer", text, False, "either"))
            text = json.dumps(nested).replace('"name": "', f'"xx": {inner}, "name": "', 1)
            out.append((f"deep {kind} {depth} in model", text, False, "either"))
    big = json.loads(json.dumps(base_config))
    big["config"]["layers"][0]["config"]["name"] = "n" * (8 << 20)
    out.append(("8 MB layer name", json.dumps(big), False, "either"))
    many = json.loads(json.dumps(base_config))
    many["config"]["layers"] = many["config"]["layers"] * 2000
    out.append(("2000 duplicate layers", json.dumps(many), False, "error"))
    # class names pointing at importable objects, and Keras 3 module/registered_name fields
    for cls in ("os.system", "builtins.eval", f"{PROBE}.Evil", f"{PROBE}>Evil", "__main__.Evil",
                "subprocess.Popen", "torch.nn.Module"):  # fmt: skip
        c = json.loads(json.dumps(base_config))
        layer = c["config"]["layers"][-1]
        layer["class_name"] = cls
        layer["module"] = PROBE
        layer["registered_name"] = f"{PROBE}>Evil"
        out.append((f"class {cls}", json.dumps(c), False, "error"))
        c = json.loads(json.dumps(base_config))
        c["class_name"] = cls
        c["module"] = PROBE
        out.append((f"model class {cls}", json.dumps(c), False, "error"))
    # eval-able strings in every string field Keras might turn into a function
    for key in ("activation", "padding", "dtype", "data_format", "kernel_initializer", "name"):
        c = json.loads(json.dumps(base_config))
        for layer in c["config"]["layers"]:
            layer["config"][key] = payload
        out.append((f"eval-able {key}", json.dumps(c), False, "either"))
    c = json.loads(json.dumps(base_config))
    c["config"]["layers"][-1]["config"]["activation"] = {"class_name": f"{PROBE}.evil", "config": {},
                                                         "module": PROBE, "registered_name": f"{PROBE}>evil"}  # fmt: skip
    out.append(("activation object", json.dumps(c), False, "error"))
    # Lambda layers: Keras 2 bytecode, Keras 3 __lambda__ bytecode, a source string
    code = _lambda_bytecode(sentinel)
    for tag, fn, ftype in (
        ("bytecode", [code, None, None], "lambda"),
        (
            "k3 bytecode",
            {"class_name": "__lambda__", "config": {"code": code, "defaults": None, "closure": None}},
            "lambda",
        ),  # fmt: skip
        ("raw string", payload, "raw"),
        ("function name", f"{PROBE}.evil", "function"),
    ):
        c = json.loads(json.dumps(base_config))
        c["config"]["layers"].insert(1, {"class_name": "Lambda", "config": {
            "name": "lam", "function": fn, "function_type": ftype, "output_shape": payload,
            "output_shape_type": "raw", "arguments": {"x": payload}}})  # fmt: skip
        out.append((f"Lambda {tag}", json.dumps(c), False, "error"))
        out.append((f"Lambda {tag} safe_mode=False", json.dumps(c), False, "error:unsafe"))
    # YAML: Python tags, alias bombs, deep nesting
    out.append(("yaml python tag", f"!!python/object/apply:os.system ['{payload}']\n", True, "error"))
    out.append(("yaml python name", f"class_name: !!python/name:{PROBE}.evil\n", True, "error"))
    out.append(("yaml python module", f"x: !!python/module:{PROBE}\n", True, "error"))
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(9)
    )
    out.append(("yaml alias bomb", bomb, True, "error"))
    out.append(("yaml deep", "[" * 2000 + "]" * 2000, True, "error"))
    out.append(("yaml not a mapping", "- 1\n- 2\n", True, "error"))
    out.append(("json not an object", "[1, 2]", False, "error"))
    out.append(("json truncated", json.dumps(base_config)[:200], False, "error"))
    out.append(("json NaN", json.dumps(base_config).replace("true", "NaN"), False, "either"))
    # layer sizes: a 5000-digit number, terabytes of weights, negative, float, string
    for tag, units in (("5000 digits", "1" + "0" * 5000), ("terabytes", str(10**12)), ("negative", "-5"),
                       ("float", "1e300"), ("string", '"8"')):  # fmt: skip
        text = json.dumps(base_config).replace('"units": 8', f'"units": {units}', 1)
        assert text != json.dumps(base_config)
        out.append((f"units {tag}", text, False, "either" if tag == "string" else "error"))
    return out


def config_cases(work: pathlib.Path, sources: list, sentinel: pathlib.Path) -> list:
    """Hostile configs through model_from_json / model_from_yaml, and inside full-model files
    (model_config, training_config, torch_config and the optimizer record)."""
    import h5py

    from torchkeras_io import to_json

    base = json.loads(to_json(our_model(), input_shape=(6,)))
    cases = []
    for tag, text, is_yaml, expect in config_texts(sentinel, base):
        cases.append(Case("config", tag, "yaml" if is_yaml else "json", text=text, expect=expect.split(":")[0],
                          safe_mode=not expect.endswith("unsafe")))  # fmt: skip
    model_file = next(p for n, p, k, _ in sources if n == "ours_model")
    for i, (tag, text, is_yaml, _) in enumerate(config_texts(sentinel, base)):
        if is_yaml or len(text) > (2 << 20):
            continue
        p = _copy(model_file, work, f"cfg{i}")
        with h5py.File(p, "r+") as f:
            f.attrs["model_config"] = text.encode("utf-8")
        cases.append(Case("config", f"model_config: {tag}", "model", p, expect="either"))
    payload = _payload_code(sentinel)
    with h5py.File(model_file, "r") as f:
        tc = json.loads(f.attrs["training_config"])
        record = json.loads(f["torch_optimizer"].attrs["record"]) if "torch_optimizer" in f else None
    hostile_tc = {
        "loss payload": dict(tc, loss=payload),
        "loss probe": dict(tc, loss={"class_name": f"{PROBE}.evil", "module": PROBE, "config": {}}),
        "metrics payload": dict(tc, metrics=[payload, {"class_name": f"{PROBE}>evil"}]),
        "optimizer probe": dict(tc, optimizer_config={"class_name": f"{PROBE}.Evil", "module": PROBE,
                                                      "config": {"learning_rate": payload}}),  # fmt: skip
        "optimizer lr payload": dict(tc, optimizer_config={"class_name": "Adam", "config": {"learning_rate": payload}}),
        "optimizer lr schedule": dict(tc, optimizer_config={"class_name": "Adam", "config": {
            "learning_rate": {"class_name": f"{PROBE}.evil", "config": {"initial_learning_rate": payload}}}}),
        "optimizer config list": dict(tc, optimizer_config={"class_name": "SGD", "config": [1, 2]}),
        "optimizer beta string": dict(tc, optimizer_config={"class_name": "Adam", "config": {"beta_1": "x"}}),
        "deep": {"loss": json.loads(_deep_json(500, kind="dict"))},
        "not an object": [1, 2, 3],
        "string": "mse",
    }  # fmt: skip
    for tag, value in hostile_tc.items():
        for drop_record in (False, True):
            p = _copy(model_file, work, f"tc_{tag.replace(' ', '_')}{drop_record}")
            with h5py.File(p, "r+") as f:
                f.attrs["training_config"] = json.dumps(value).encode("utf-8")
                if drop_record and "torch_optimizer" in f:
                    del f["torch_optimizer"]  # the Keras optimizer reader then takes over
            cases.append(Case("optimizer", f"training_config {tag}{' (keras)' if drop_record else ''}", "model", p))
    if record is not None:
        first_state = next(iter(record["state"]), None)
        hostile_records = {
            "class probe": dict(record, class_name=f"{PROBE}.Evil"),
            "class builtin": dict(record, class_name="builtins.eval"),
            "no groups": {k: v for k, v in record.items() if k != "param_groups"},
            "groups not a list": dict(record, param_groups=5),
            "group not a dict": dict(record, param_groups=[5]),
            "params not a list": dict(record, param_groups=[dict(record["param_groups"][0], params=7)]),
            "lr string": dict(record, param_groups=[dict(record["param_groups"][0], lr=payload)]),
            "unknown key": dict(record, param_groups=[dict(record["param_groups"][0], params=["nope"])]),
            "state not a dict": dict(record, state=[1]),
            "state entry string": dict(record, state={first_state: payload}) if first_state else record,
            "datasets missing": dict(record, state={first_state: {"exp_avg": {"datasets": ["../../etc"]}}})
            if first_state else record,
            "datasets not a list": dict(record, state={first_state: {"exp_avg": {"datasets": 3}}})
            if first_state else record,
            "scheduler probe": dict(record, scheduler={"class_name": f"{PROBE}.evil", "state": {}}),
            "scheduler no state": dict(record, scheduler={"class_name": "StepLR"}),
            "deep": dict(record, extra=json.loads(_deep_json(800, kind="dict"))),
        }  # fmt: skip
        for tag, value in hostile_records.items():
            p = _copy(model_file, work, f"rec_{tag.replace(' ', '_')}")
            with h5py.File(p, "r+") as f:
                f["torch_optimizer"].attrs["record"] = json.dumps(value).encode("utf-8")
            cases.append(Case("optimizer", f"torch optimizer record: {tag}", "model", p))
        for tag in ("string", "terabytes", "missing", "soft", "scalar"):
            p = _copy(model_file, work, f"recd_{tag}")
            with h5py.File(p, "r+") as f:
                names = []
                f["torch_optimizer"].visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                if not names:
                    break
                d = "torch_optimizer/" + names[0]
                del f[d]
                if tag == "string":
                    f[d] = [b"x", b"y"]
                elif tag == "terabytes":
                    f.create_dataset(d, shape=(2**20, 2**20), dtype="f4")
                elif tag == "soft":
                    f[d] = h5py.SoftLink("/model_weights")
                elif tag == "scalar":
                    f[d] = 1.0
            cases.append(Case("optimizer", f"optimizer dataset {tag}", "model", p))
    # torch_config (a registered torch module record): names are keys, never import paths
    for tag, value in {
        "probe class": {"registered_name": f"{PROBE}.Evil", "config": {}},
        "probe key": {"registered_name": f"{PROBE}>Evil", "config": {}},
        "builtin": {"registered_name": "builtins.eval", "config": {"source": payload}},
        "config list": {"registered_name": "Custom>X", "config": [1]},
        "deep": {"registered_name": "Custom>X", "config": json.loads(_deep_json(800, kind="dict"))},
    }.items():
        p = _copy(model_file, work, f"torchcfg_{tag.replace(' ', '_')}")
        with h5py.File(p, "r+") as f:
            del f.attrs["model_config"]
            f.attrs["torch_config"] = json.dumps(value).encode("utf-8")
        cases.append(Case("config", f"torch_config {tag}", "model", p, expect="error"))
    # huge attributes: megabytes of model_config, a dense attribute, optimizer weight_names
    p = _copy(model_file, work, "bigcfg")
    with h5py.File(p, "r+") as f:
        f.attrs.create("model_config", json.dumps(dict(base, pad="p" * (30 << 20))).encode(), dtype=h5py.string_dtype())
    cases.append(Case("config", "30 MB model_config", "model", p, expect="either"))
    return cases


def lambda_corpus_cases() -> list:
    if not (CORPUS / "files" / LAMBDA_FILE).exists():
        return []
    path = CORPUS / "files" / LAMBDA_FILE
    # translated from its bytecode (never run): it loads, in safe mode too
    return [Case("lambda", "real Lambda bytecode", "model", path, expect="ok"),
            Case("lambda", "real Lambda bytecode safe_mode=False", "model", path, expect="ok",
                 safe_mode=False)]  # fmt: skip


# ------------------------------------------------------------------------------- running
class _Timeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


def module_state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k].view(-1).view(torch.uint8), b[k].view(-1).view(torch.uint8))
                                        if a[k].numel() else True for k in a)  # fmt: skip


def _run_case(case: Case) -> dict:
    import torchkeras_io as tkio

    result = {"family": case.family, "case": case.name}
    module = before = None
    kw = dict(case.kw)
    try:
        if case.kind == "weights":
            module = case.module()
            before = module_state(module)
            extra = kw.pop("load_kwargs", {})
            value = tkio.load_weights(module, case.path, **extra, **kw)
        elif case.kind == "model":
            # compile=True runs the compile=False path first, then the training-config readers
            value = tkio.load_model(case.path, compile=False, **kw)
            value = tkio.load_model(case.path, compile=True, **kw)
        elif case.kind == "json":
            value = tkio.model_from_json(case.text, **kw)
        else:
            value = tkio.model_from_yaml(case.text, **kw)
        result["outcome"] = "loaded"
        if case.check is not None:
            case.check(module if module is not None else value)
    except _Timeout:
        raise
    except tkio.TorchKerasIOError as exc:
        result["outcome"] = "error"
        result["error"] = type(exc).__name__
        result["message"] = str(exc)[:300]
        if not str(exc).strip():
            result["bad"] = "error with an empty message"
        if case.check is not None and case.expect == "error":
            try:
                case.check(exc)
            except AssertionError as a:
                result["bad"] = f"check failed: {a}"
    except AssertionError as exc:
        result["outcome"] = "error"
        result["bad"] = f"check failed: {exc}"
    except (Exception, RecursionError) as exc:  # noqa: BLE001 - the point: anything else is a bug
        result["outcome"] = "crash"
        result["bad"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if module is not None and result["outcome"] == "error" and not same_state(before, module_state(module)):
        result["bad"] = "load_weights failed but changed the module"
    if "bad" not in result:
        if case.expect == "error" and result["outcome"] != "error":
            result["bad"] = "loaded, but an error was expected"
        if case.expect == "ok" and result["outcome"] != "loaded":
            result["bad"] = f"expected a load: {result.get('message')}"
    return result


def run_all(work: pathlib.Path, seed: int, families: set) -> None:
    import resource
    import signal

    import psutil

    sentinel = work / "SENTINEL"
    probe_dir = work / "probe"
    probe_dir.mkdir()
    _probe_module(probe_dir, sentinel)
    sys.path.insert(0, str(probe_dir))  # the probe is importable: a library importing by name would run it

    rng = random.Random(seed)
    sources = _sources(work)
    cases = []
    gen = {
        "truncation": lambda: byte_cases(work, sources, rng),
        "structure": lambda: structure_cases(work, sources, rng),
        "dtype": lambda: dtype_shape_cases(work, sources),
        "nonfinite": lambda: nonfinite_cases(work, sources),
        "names": lambda: name_cases(work, sources),
        "config": lambda: config_cases(work, sources, sentinel) + lambda_corpus_cases(),
    }
    for fam in gen:
        if fam in families:
            cases.extend(gen[fam]())
    # full-model files also go through load_weights into the model they hold (partial-load check)
    for c in list(cases):
        if c.kind == "model" and c.family in ("truncation", "bitflip", "missing", "swapped", "dtype/shape", "links"):
            orig = next(p for n, p, k, _ in sources if c.name.startswith(n))
            factory, load_kwargs = _module_for(orig)
            cases.append(Case(c.family, c.name + " [load_weights]", "weights", c.path, module=factory,
                              load_kwargs=load_kwargs))  # fmt: skip

    proc = psutil.Process()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (proc.memory_info().vms + MEMORY_HEADROOM, hard))
    signal.signal(signal.SIGALRM, _on_alarm)
    for case in cases:
        print(json.dumps({"start": case.name}), flush=True)  # names the case if the process dies
        rss = proc.memory_info().rss
        t0 = time.perf_counter()
        signal.alarm(CASE_SECONDS)
        try:
            result = _run_case(case)
        except _Timeout:
            result = {"family": case.family, "case": case.name, "outcome": "hang",
                      "bad": f"no result within {CASE_SECONDS} s"}  # fmt: skip
        finally:
            signal.alarm(0)
        result["seconds"] = round(time.perf_counter() - t0, 3)
        growth = proc.memory_info().rss - rss
        if growth > RSS_GROWTH_LIMIT:
            result["bad"] = f"resident memory grew by {growth >> 20} MB"
        if sentinel.exists():
            result["bad"] = f"code from the file ran: {sentinel.read_text()}"
            sentinel.unlink()
        if PROBE in sys.modules:
            result["bad"] = f"the file made the library import {PROBE}"
            del sys.modules[PROBE]
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    run_all(pathlib.Path(sys.argv[1]), int(sys.argv[2]), set(sys.argv[3].split(",")))
