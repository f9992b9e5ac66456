"""Property-based fuzzing (hypothesis) of the readers: legacy HDF5 weights, model configs, and the
training config / optimizer state of full-model files.

The property: whatever the input, the reader raises a :class:`TorchKerasIOError` subclass or
loads; never another exception, never a hang, and a failed ``load_weights`` leaves the module
unchanged. Bounded in CI (a few dozen examples per test, derandomized, no example database);
``TKIO_FUZZ_EXAMPLES=5000`` runs a longer campaign. Every failure a run ever found is kept below as
an ``@example``, so it is retried on every run (the in-process regressions of the bugs they
exposed are in ``test_hostile_hdf5.py``).

``TKIO_FUZZ_LAST=<file>`` keeps each byte-level input there before it is read, so that a crash
inside libhdf5 (which takes the process down) leaves its input behind
(``python -X faulthandler -m pytest ...`` shows where).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import tempfile

import h5py
import numpy as np
import pytest
import torch
from hostile_corpus import gheap_would_hang  # a sibling module: tests/ is on sys.path
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from torch import nn

import torchkeras_io as tkio

EXAMPLES = int(os.environ.get("TKIO_FUZZ_EXAMPLES", "30"))
SECONDS = 10  # per example

FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same examples on every CI run
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


def _model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


class _Timeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _Timeout


def _outcome(fn) -> str:
    """'ok' or the TorchKerasIOError class name; anything else fails the property."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS)
    try:
        fn()
        return "ok"
    except tkio.TorchKerasIOError as exc:
        assert str(exc).strip(), "an error without a message"
        return type(exc).__name__
    except _Timeout:
        raise AssertionError(f"no result within {SECONDS} s") from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _unchanged(before: dict, module) -> bool:
    after = module.state_dict()
    return all(torch.equal(before[k].view(-1).view(torch.uint8), after[k].view(-1).view(torch.uint8)) for k in before)


@functools.cache
def _base_files() -> tuple:
    """(weights file bytes, full-model file path) written once per session."""
    torch.manual_seed(0)
    directory = tempfile.mkdtemp(prefix="tkio_fuzz_")
    weights = os.path.join(directory, "w.h5")
    tkio.save_weights(_model(), weights)
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    full = os.path.join(directory, "m.h5")
    tkio.save_model(model, full, optimizer=opt, loss="mse", metrics=["mae"], input_shape=(3,))
    with open(weights, "rb") as fh:
        return fh.read(), full


def _load_weights_property(path: str) -> str:
    module = _model()
    before = _state(module)
    result = _outcome(lambda: tkio.load_weights(module, path))
    if result != "ok":
        assert _unchanged(before, module), f"load_weights failed ({result}) but changed the module"
    return result


# ------------------------------------------------------------------------ legacy HDF5: bytes
edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=12)


@FUZZ
@given(edits=edits, cut=st.one_of(st.none(), st.integers(0, 1 << 20)))
# found by the hostile corpus: metadata bit flips that made h5py raise RuntimeError / KeyError
@example(edits=[(1144, 0x10)], cut=None)
@example(edits=[(809, 0x02)], cut=None)
@example(edits=[(688, 0x40)], cut=None)
@example(edits=[(8, 0xFF)], cut=None)
@example(edits=[(0, 0)], cut=None)
@example(edits=[(59968, 128)], cut=None)  # found by a 400-example run: a name byte made invalid UTF-8
@example(edits=[(1065, 0xDC)], cut=None)  # found by a 5000-example run: segfault in h5py (string type -> sequence)
def test_fuzz_weights_bytes(tmp_path_factory, edits, cut):
    data, _ = _base_files()
    buf = bytearray(data)
    for offset, value in edits:
        buf[offset % len(buf)] ^= value or 1
    if cut is not None:
        buf = buf[: cut % (len(buf) + 1)]
    # a known libhdf5 hang no Python timeout can interrupt (hostile_corpus.gheap_would_hang)
    assume(not gheap_would_hang(bytes(buf)))
    path = tmp_path_factory.mktemp("fb") / "x.h5"
    path.write_bytes(bytes(buf))
    if os.environ.get("TKIO_FUZZ_LAST"):  # after a crash inside libhdf5, this file is the input
        with open(os.environ["TKIO_FUZZ_LAST"], "wb") as fh:
            fh.write(bytes(buf))
    _load_weights_property(str(path))


# ------------------------------------------------------------------------ legacy HDF5: structure
names = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
dtypes = st.sampled_from(["f4", "f8", "f2", "i4", "u1", "i8", "S3", "bool", "c8", ">f4"])
shapes = st.lists(st.integers(0, 5), max_size=3).map(tuple)
attr_values = st.one_of(
    st.lists(names, max_size=4),
    st.lists(st.binary(max_size=6), max_size=4),
    st.floats(allow_nan=True),
    st.integers(-(2**31), 2**31),
    names,
)


@st.composite
def weight_files(draw):
    """A legacy weights file: plausible layout, fuzzed names, dtypes, shapes and attributes."""
    layers = draw(st.lists(st.sampled_from(["0", "1", "3", "x", "../0", "0/0", ""]) | names, max_size=5))
    spec = []
    for layer in layers:
        weights = draw(st.lists(st.tuples(st.sampled_from(["kernel:0", "bias:0", "gamma:0"]) | names, dtypes,
                                          shapes), max_size=4))  # fmt: skip
        spec.append((layer, weights, draw(st.dictionaries(st.sampled_from(["weight_names", "torch_extra_names",
                                                                            "keras_class"]), attr_values,
                                                          max_size=2))))  # fmt: skip
    root_attrs = draw(st.dictionaries(st.sampled_from(["keras_version", "backend", "layer_names0"]), attr_values,
                                      max_size=2))  # fmt: skip
    return spec, layers, root_attrs


def _write_weights(path: str, spec, layers, root_attrs) -> None:
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode("utf-8", "surrogatepass") for n in layers], dtype="S")
        for layer, weights, attrs in spec:
            if not layer or layer in (".", "..") or layer.startswith("/") or "\x00" in layer:
                continue
            try:
                g = f.require_group(layer)
            except (ValueError, TypeError, KeyError, OSError):
                continue
            wn = []
            for wname, dtype, shape in weights:
                full = f"{layer}/{wname}"
                wn.append(full.encode("utf-8", "surrogatepass"))
                try:
                    g.create_dataset(full, data=np.zeros(shape, dtype=dtype))
                except (ValueError, TypeError, KeyError, OSError, RuntimeError):
                    pass
            g.attrs["weight_names"] = np.array(wn, dtype="S") if wn else np.array([])
            for k, v in attrs.items():
                try:
                    g.attrs[k] = v
                except (ValueError, TypeError, OSError):
                    pass
        for k, v in root_attrs.items():
            try:
                f.attrs[k] = v
            except (ValueError, TypeError, OSError):
                pass


@FUZZ
@given(weight_files())
@example(([("0", [("kernel:0", "f4", (3, 4))], {})], ["\udcff"], {}))  # not UTF-8 (surrogate escape)
@example(([("0", [("kernel:0", "f4", (3, 4))], {"weight_names": 1.5})], ["0"], {}))
@example(([("0", [("kernel:0", "c8", (3, 4))], {})], ["0", "0"], {}))
@example(([], ["../0"], {"layer_names0": ["x"]}))
def test_fuzz_weights_structure(tmp_path_factory, case):
    spec, layers, root_attrs = case
    path = str(tmp_path_factory.mktemp("fs") / "x.h5")
    try:
        _write_weights(path, spec, layers, root_attrs)
    except (ValueError, TypeError, UnicodeEncodeError, OSError):
        return  # h5py could not even write this one
    _load_weights_property(path)


# ------------------------------------------------------------------------ model configs
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats(allow_nan=False) | names,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(names, children, max_size=4),
    max_leaves=20,
)
CONFIG_KEYS = ["class_name", "config", "layers", "name", "inbound_nodes", "input_layers", "output_layers", "units",
               "activation", "batch_input_shape", "batch_shape", "dtype", "layer", "kernel_size", "function",
               "registered_name", "module", "use_bias", "filters", "keras_history", "args", "kwargs"]  # fmt: skip


@functools.cache
def _base_configs() -> tuple:
    seq = json.loads(tkio.to_json(_model(), input_shape=(3,)))
    inp = nn.Sequential(nn.Linear(3, 4))
    func = json.loads(tkio.to_json(inp, input_shape=(3,)))
    return seq, func


def _paths(x, prefix=()):
    yield prefix
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _paths(v, prefix + (i,))


def _replace(x, path, value):
    if not path:
        return value
    x[path[0]] = _replace(x[path[0]], path[1:], value)
    return x


@FUZZ
@given(which=st.integers(0, 1), pick=st.integers(0, 10**6), value=json_values | st.sampled_from(CONFIG_KEYS),
       yaml_form=st.booleans())  # fmt: skip
@example(which=0, pick=0, value=[1, 2], yaml_form=False)  # not an object
@example(which=0, pick=1, value="os.system", yaml_form=False)  # a class name that is an import path
@example(which=0, pick=1, value="__main__.Evil", yaml_form=True)
def test_fuzz_model_config(which, pick, value, yaml_form):
    config = json.loads(json.dumps(_base_configs()[which]))
    paths = list(_paths(config))
    config = _replace(config, paths[pick % len(paths)], value)
    text = json.dumps(config)
    if yaml_form:
        import yaml

        _outcome(lambda: tkio.model_from_yaml(yaml.safe_dump(config)))
    else:
        _outcome(lambda: tkio.model_from_json(text))


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
@example("[" * 3000)  # deep nesting
@example("a: &a [*a]\n")  # a cyclic YAML alias
@example('{"class_name": "Sequential", "config": {"layers": [{"class_name": "Dense", "config": ')
def test_fuzz_config_text(text):
    _outcome(lambda: tkio.model_from_json(text))
    _outcome(lambda: tkio.model_from_yaml(text))


# ------------------------------------------------------------------------ training config / optimizer
@FUZZ
@given(
    target=st.sampled_from(["training_config", "record"]),
    pick=st.integers(0, 10**6),
    value=json_values,
    drop_record=st.booleans(),
)
# found by the hostile corpus (each raised AttributeError / KeyError / TypeError / RuntimeError)
@example(target="training_config", pick=0, value=[1, 2, 3], drop_record=False)
@example(target="training_config", pick=0, value="mse", drop_record=True)
@example(target="record", pick=0, value=5, drop_record=False)
@example(target="record", pick=3, value=5, drop_record=False)
@example(target="record", pick=4, value="x", drop_record=False)
@example(target="training_config", pick=20378, value=1, drop_record=False)  # 5000-example run: "metrics": 1
def test_fuzz_training_state(tmp_path_factory, target, pick, value, drop_record):
    _, base = _base_files()
    path = str(tmp_path_factory.mktemp("ft") / "m.h5")
    with open(base, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    with h5py.File(path, "r+") as f:
        if target == "training_config":
            config = json.loads(f.attrs["training_config"])
        else:
            config = json.loads(f["torch_optimizer"].attrs["record"])
        paths = list(_paths(config))
        config = _replace(config, paths[pick % len(paths)], value)
        if target == "training_config":
            f.attrs["training_config"] = json.dumps(config).encode()
        else:
            f["torch_optimizer"].attrs["record"] = json.dumps(config).encode()
        if drop_record:
            del f["torch_optimizer"]  # the Keras optimizer_weights reader takes over
    _outcome(lambda: tkio.load_model(path, compile=True))


@FUZZ
@given(
    which=st.integers(0, 10**6),
    dtype=dtypes,
    shape=st.lists(st.integers(0, 6), max_size=3).map(tuple) | st.just((2**20, 2**20)),
)
@example(which=0, dtype="f4", shape=(2**20, 2**20))  # claimed terabytes: refused before reading
@example(which=1, dtype="f4", shape=())
@example(which=2, dtype="f4", shape=(7, 7))
def test_fuzz_optimizer_datasets(tmp_path_factory, which, dtype, shape):
    _, base = _base_files()
    path = str(tmp_path_factory.mktemp("fo") / "m.h5")
    with open(base, "rb") as src, open(path, "wb") as dst:
        dst.write(src.read())
    with h5py.File(path, "r+") as f:
        found = []
        for group in ("torch_optimizer", "optimizer_weights"):
            if group in f:
                f[group].visititems(lambda n, o, g=group: found.append(f"{g}/{n}") if isinstance(o, h5py.Dataset)
                                    else None)  # fmt: skip
        name = found[which % len(found)]
        del f[name]
        if len(shape) == 2 and shape[0] == 2**20:
            f.create_dataset(name, shape=shape, dtype="f4")
        else:
            f.create_dataset(name, data=np.zeros(shape, dtype=dtype))
    _outcome(lambda: tkio.load_model(path, compile=True))


def test_settings_are_bounded():
    """CI runs a bounded campaign unless asked for more."""
    if "TKIO_FUZZ_EXAMPLES" not in os.environ:
        assert EXAMPLES <= 50
    assert FUZZ.database is None and FUZZ.derandomize


@pytest.fixture(autouse=True)
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
