"""Keras Lambda layers load as torch modules translated from their stored bytecode (never run), and compute what Keras computes.

- Real files: every Lambda of ``../shared/corpus`` translates (CPython 3.5 bytecode, Keras 1 and
  2) and its file loads; where Keras itself cannot run the file (tf-keras on Python 3.11 cannot
  unmarshal 3.5 bytecode), the same network rebuilt in tf-keras with an equivalent Lambda is the
  reference.
- Real bytecode of CPython 3.6–3.12 (``tests/data/lambda_bytecode.json``, written by each of those
  interpreters from the same sources): each translates to the same operations; 3.13 is refused.
- Lambdas compiled here (Python 3.11) inside real tf-keras models, saved to ``.h5``: our outputs
  match tf-keras ``predict`` within 1e-5 relative (VAE sampling: its deterministic part, and its
  noise's statistics). A Keras 3 ``.keras`` file with a ``__lambda__`` function loads the same way.
"""

from __future__ import annotations

import base64
import json
import math
import pathlib
import types
import warnings

import numpy as np
import pytest
import torch
from conftest import assert_close_rel, keras_module

import torchkeras_io as tkio
from torchkeras_io._keras.pycode import PyCodeError, translate_lambda

ROOT = pathlib.Path(__file__).resolve().parent
CORPUS = ROOT.parent.parent / "shared" / "corpus"
DATA = json.loads((ROOT / "data" / "lambda_bytecode.json").read_text())
SOURCES, BYTECODE = DATA["sources"], DATA["bytecode"]
VERSIONS = ("3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12")
ARGUMENTS = {"quantise": {"levels": 4}}
TWO_INPUTS = {"euclidean", "concat", "sampling"}
REFUSED = {  # source -> what the error must name
    "refuse_branch": r"(COMPARE_OP|IS_OP|POP_JUMP_IF_NONE)",
    "refuse_function": "K.foo",
    "refuse_import": "__import__",
    "refuse_comprehension": "(nested functions|GET_ITER)",
    "refuse_method": ".numpy",
}
SUPPORTED = sorted(k for k in SOURCES if k not in REFUSED)
# more of the table, compiled only here (3.11), against tf-keras too
EXTRA = {
    "x_reductions": "lambda x: K.max(x, axis=[1, 2]) - K.min(x, axis=-1)[:, 0, :3] + K.std(x, axis=(1, 2)) * K.var(x, axis=1)[:, 2]",
    "x_prod_sum_all": "lambda x: K.prod(x[:, :3, :4], axis=(1, 2), keepdims=False) + K.sum(x) * 0.0 + K.mean(x, keepdims=True)[0, 0]",
    "x_activations": "lambda x: K.softmax(x) + K.relu(x, alpha=0.1, max_value=0.5) + K.elu(x, 0.5) + K.tanh(x) * K.sigmoid(x)",
    "x_more_activations": "lambda x: K.softplus(x) + K.softsign(x) + K.hard_sigmoid(x) + K.relu(x, threshold=0.2) + K.relu(x, max_value=6)",
    "x_shapes": "lambda x: K.reshape(K.permute_dimensions(x, (0, 3, 1, 2)), (-1, 3, 960))",
    "x_stack": "lambda x: K.stack([x[..., 0], x[..., 1]], axis=-1) + K.expand_dims(K.squeeze(x[..., 2:], -1))",
    "x_flatten": "lambda x: K.batch_flatten(x) * 2.0",
    "x_argmax": "lambda x: K.cast(K.argmax(x, axis=-1), 'float32') + K.cast(K.argmin(x), 'float32')",
    "x_resize_nearest": "lambda x: K.tf.image.resize_images(x, (50, 30), method=1)",
    "x_resize_align": "lambda x: K.tf.image.resize_images(x, [7, 90], align_corners=True)",
    "x_resize_factor": "lambda x: K.resize_images(x, 2, 3, 'channels_last')",
    "x_resize_v2_nearest": "lambda x: tf.image.resize(x, (17, 61), method='nearest')",
    "x_resize_v2_down": "lambda x: tf.image.resize(x, [9, 13])",
    "x_tf_ops": "lambda x: tf.clip_by_value(tf.concat([x, -x], axis=-1), -0.5, 0.7) + tf.reduce_max(x, axis=-1, keepdims=True)",
    "x_tf_math": "lambda x: tf.math.log(tf.math.exp(x) + 1.0) + tf.nn.l2_normalize(x, axis=-1) + tf.nn.relu(x) + tf.abs(x) ** 0.5",
    "x_like": "lambda x: K.ones_like(x) * 0.5 + K.zeros_like(x) + K.exp(-K.square(x)) + K.sign(x) * K.log(1.0 + K.abs(x))",
    "x_clip_round": "lambda x: K.round(K.clip(x * 3.0, -1.5, 2.5)) + K.clip(x, 1.0, 0.5) + K.maximum(x, 0.2) - K.minimum(x, -0.3)",
    "x_transpose_matmul": "lambda x: x[:, 0] @ K.permute_dimensions(x[:, 0], (0, 2, 1))",
    "x_int_shape": "lambda x: x * K.int_shape(x)[-1] + x.shape[1]",
    "x_concat_axis": "lambda x: K.concatenate([x, x[:, :, :, :1] * 2.0])",
    "x_compare_ops": "lambda x: K.cast(x >= 0.1, 'float32') * K.cast(x < 0.4, 'float32') + K.cast(x != 0.0, 'float32')",
    "x_np_math": "lambda x: x * np.sqrt(2.0) + math.log(3.0) - np.pi / np.e + float(2) + abs(-3)",
    "x_more_k": "lambda x: K.reverse(x, axes=1) + K.repeat_elements(x[:, :12], 2, axis=1) + K.tile(x[:, :12], (1, 2, 1, 1))",
    "x_dot_cumsum": "lambda x: K.dot(x[:, 0], K.ones_like(x[0, 0, :3, :2])) + K.cumsum(x[:, 0, :, :2], axis=1)",
    "x_onehot_lse": "lambda x: K.one_hot(K.argmax(x, axis=-1), 3) + tf.reduce_logsumexp(x, axis=-1, keepdims=True)",
    "x_k_compare": "lambda x: K.cast(K.greater(x, 0.2), 'float32') + K.cast(K.less_equal(x, -0.1), 'float32')",
    "x_tf_more": "lambda x: tf.reverse(x, [2]) + tf.tile(x[:, :, :20], [1, 1, 2, 1]) + tf.math.cumsum(x, axis=2, reverse=True)",
    "x_tf_matmul": "lambda x: tf.matmul(x[:, :, :, 0], x[:, :, :, 1], transpose_b=True) + tf.reduce_logsumexp(x)",
    "x_tf_onehot": "lambda x: tf.one_hot(tf.cast(x[..., 0] > 0, 'int32'), 4) + tf.cumsum(x, axis=1, exclusive=True)[..., :1]",
    "x_pow_div": "lambda x: K.pow(K.abs(x) + 1.0, 1.5) / (1.0 + K.square(x)) // 0.5 % 2.0",
}


def _config(name: str, version: str) -> dict:
    code, defaults, closure = BYTECODE[version][name]
    return {"name": name, "function": [code, defaults, closure], "function_type": "lambda",
            "arguments": ARGUMENTS.get(name, {})}  # fmt: skip


ALL_SOURCES = {**{k: SOURCES[k] for k in SUPPORTED}, **EXTRA}


def _inputs(name: str, batch: int = 2, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    if name in TWO_INPUTS:
        n = 3 if name == "sampling" else 4
        return [rng.normal(size=(batch, n)).astype(np.float32) for _ in range(2)]
    return [rng.normal(size=(batch, 24, 40, 3)).astype(np.float32)]


def _run(program, xs):
    from torchkeras_io._layers.lambdas import TranslatedLambda

    module = TranslatedLambda(program)
    ts = [torch.from_numpy(x) for x in xs]
    with torch.no_grad():
        return module(ts if len(ts) > 1 else ts[0])


# ------------------------------------------------------------------------------------ real corpus
def _corpus_lambdas() -> list:
    """(file, layer name, config, keras generation) of every Lambda in the corpus files and sidecars."""
    import h5py

    out = []

    def walk(obj, where, generation):
        if isinstance(obj, dict):
            if obj.get("class_name") == "Lambda":
                out.append((where, obj["config"]["name"], obj["config"], generation))
            for v in obj.values():
                walk(v, where, generation)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, where, generation)

    for path in sorted((CORPUS / "files").iterdir()):
        try:
            with h5py.File(path, "r") as f:
                cfg, version = f.attrs.get("model_config"), f.attrs.get("keras_version", b"2")
        except OSError:
            continue
        if cfg is not None and b"Lambda" in (cfg if isinstance(cfg, bytes) else cfg.encode()):
            version = version.decode() if isinstance(version, bytes) else str(version)
            walk(json.loads(cfg), path.name, 1 if version.startswith("1") else 2)
    for path in sorted((CORPUS / "arch").glob("*.json")):
        data = json.loads(path.read_text())
        data = json.loads(data) if isinstance(data, str) else data
        walk(data, path.name, 1 if str(data.get("keras_version", "2")).startswith("1") else 2)
    return out


needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is absent")


@needs_corpus
def test_every_corpus_lambda_translates():
    found = _corpus_lambdas()
    assert len(found) >= 3, found
    x = np.random.default_rng(1).uniform(0, 255, size=(2, 8, 8, 3)).astype(np.float32)
    for where, _name, config, generation in found:
        program = translate_lambda(config, generation)
        assert program.python == "3.5", (where, program.python)  # all real ones are CPython 3.5 bytecode
        # every one is the input normalisation x / 127.5 - 1.0
        assert_close_rel(_run(program, [x]), x / 127.5 - 1.0, 1e-6)


CORPUS_LAMBDA_FILES = {  # file -> (entry point, input shape)
    "1560800__CarND-Behavioral-Cloning-P3__model.h5": "model",
    "ottonello__P3-behavioral-cloning__model.h5": "model",
    "wolfapple__CarND-Behavioral-Cloning-Project__model.h5": "arch",
}


@needs_corpus
@pytest.mark.parametrize("name", sorted(CORPUS_LAMBDA_FILES))
def test_corpus_lambda_files_load(name):
    path = CORPUS / "files" / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tkio.TorchKerasIOWarning)
        if CORPUS_LAMBDA_FILES[name] == "model":
            model = tkio.load_model(path, compile=False)  # safe_mode=True: nothing from the file runs
        else:
            model = tkio.model_from_json((CORPUS / "arch" / f"{name}.json").read_text())
            assert model.load_weights(path).all_loaded
    kinds = [type(m).__name__ for m in model.modules()]
    assert "TranslatedLambda" in kinds
    shape = {"1560800": (45, 160, 3), "ottonello": (160, 320, 3), "wolfapple": (64, 64, 3)}[name.split("__")[0]]
    x = np.random.default_rng(0).uniform(0, 255, size=(2, *shape)).astype(np.float32)
    out = model.predict(x)
    assert np.all(np.isfinite(out)) and out.shape[0] == 2


@needs_corpus
def test_corpus_lambda_file_matches_tf_keras(tmp_path):
    """The Keras 2.2.4 file's network in tf-keras, its 3.5 Lambda swapped for the same function
    compiled here (what the translation says it is), with the file's weights: the reference
    tf-keras cannot compute from the file itself."""
    keras = keras_module("tf_keras")
    import h5py

    name = "1560800__CarND-Behavioral-Cloning-P3__model.h5"
    path = CORPUS / "files" / name
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    layers = config["config"]["layers"] if isinstance(config["config"], dict) else config["config"]
    fn = keras.layers.Lambda(lambda x: x / 127.5 - 1.0).get_config()["function"]
    for layer in layers:
        if layer["class_name"] == "Lambda":
            layer["config"]["function"] = fn
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    with warnings.catch_warnings(), SafeModeScope(False):  # the function is the one compiled just above
        warnings.simplefilter("ignore")
        ref_model = keras.models.model_from_json(json.dumps(config))
        ref_model.load_weights(str(path))
        model = tkio.load_model(path, compile=False)
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 45, 160, 3)).astype(np.float32)
    ref = ref_model.predict(x, verbose=0)
    assert_close_rel(model.predict(x), ref, 1e-5)


# ------------------------------------------------------------------------------------ other versions
@pytest.mark.parametrize("version", VERSIONS)
def test_real_bytecode_of_each_python_translates_alike(version):
    for name in SUPPORTED:
        reference = translate_lambda(_config(name, "3.11"), 2)
        program = translate_lambda(_config(name, version), 2)
        assert version in program.python or program.python.startswith(version[:3]) or "–" in program.python
        assert repr(program.expr) == repr(reference.expr), (version, name)


def test_python_version_is_identified():
    expect = {"3.6": "3.6–3.7", "3.7": "3.7", "3.8": "3.8–3.10", "3.9": "3.9–3.10", "3.10": "3.9–3.10",
              "3.11": "3.11", "3.12": "3.12"}  # fmt: skip
    for version, python in expect.items():
        # list_const uses LIST_EXTEND (3.9+); powers calls through LOAD_METHOD (3.7+) and has caches (3.11/3.12)
        name = "list_const" if version in ("3.9", "3.10") else "powers"
        assert translate_lambda(_config(name, version), 2).python == python, version


@pytest.mark.parametrize("version", [*VERSIONS, "3.13"])
def test_unsupported_lambdas_name_what_is_unsupported(version):
    for name, pattern in REFUSED.items():
        with pytest.raises(PyCodeError, match=pattern if version != "3.13" else "3.13"):
            translate_lambda(_config(name, version), 2)


def test_python_313_is_refused_clearly():
    with pytest.raises(PyCodeError, match="3.13 and later are not supported"):
        translate_lambda(_config("normalise", "3.13"), 2)


def test_unsupported_lambda_in_a_model_is_our_error():
    layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 4]}},
              {"class_name": "Lambda", "config": _config("refuse_function", "3.11") | {"name": "lam"}}]  # fmt: skip
    cfg = {"class_name": "Sequential", "config": {"name": "s", "layers": layers}}
    with pytest.raises(tkio.UnsupportedLayerError, match=r"Lambda 'lam'.*never run.*K\.foo.*custom_objects"):
        tkio.model_from_json(json.dumps(cfg))
    model = tkio.model_from_json(json.dumps(cfg), custom_objects={"lam": lambda c: torch.nn.Identity()})
    assert model is not None


# ------------------------------------------------------------------------------------ against tf-keras
def _oracle_namespace(keras):
    import tensorflow as tf

    backend = types.SimpleNamespace(
        **{k: getattr(keras.backend, k) for k in dir(keras.backend) if not k.startswith("__")}
    )
    backend.tf = tf.compat.v1  # Keras 2.x's K.tf was TF1: K.tf.image.resize_images
    return {"K": backend, "tf": tf, "np": np, "math": math}


def _function(source: str, namespace: dict):
    scope = dict(namespace)
    if source.startswith("def "):
        exec(source, scope)  # the test's own source, never the file's bytes
        return next(v for k, v in scope.items() if k not in namespace and k != "__builtins__")
    return eval(source, scope)


def _group(name: str) -> str:
    return "sampling" if name == "sampling" else "pairs" if name in TWO_INPUTS else "images"


@pytest.fixture(scope="module")
def tf_keras_models(tmp_path_factory):
    """Every supported source as a Lambda in a tf-keras model (Python 3.11 bytecode) saved to .h5, loaded
    by us in safe mode: ``{name: (ours, tf-keras's, inputs)}``. One model per input signature, one
    output per Lambda, so tf-keras builds and saves three models, not fifty."""
    keras = keras_module("tf_keras")
    namespace = _oracle_namespace(keras)
    work = tmp_path_factory.mktemp("lambdas")
    out = {}
    for group in ("images", "pairs", "sampling"):
        names = [n for n in sorted(ALL_SOURCES) if _group(n) == group]
        xs = _inputs(names[0], batch=2000 if group == "sampling" else 2)
        inputs = [keras.Input(shape=x.shape[1:]) for x in xs]
        outputs = []
        for name in names:
            fn = _function(ALL_SOURCES[name], namespace)
            layer = keras.layers.Lambda(fn, arguments=ARGUMENTS.get(name), name=f"lam_{name}")
            outputs.append(layer(inputs if len(inputs) > 1 else inputs[0]))
        model = keras.Model(inputs, outputs)
        path = work / f"{group}.h5"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.save(str(path))
        feed = xs if len(xs) > 1 else xs[0]
        refs = model.predict(feed, verbose=0)
        ours = tkio.load_model(path, compile=False).predict(feed)  # safe_mode=True
        refs, ours = (r if isinstance(r, list) else [r] for r in (refs, ours))
        for name, ref, got in zip(names, refs, ours):
            out[name] = (got, ref, xs)
    return out


@pytest.mark.parametrize("name", sorted(ALL_SOURCES))
def test_lambda_matches_tf_keras(tf_keras_models, name):
    got, ref, xs = tf_keras_models[name]
    if name == "sampling":  # z_mean + exp(z_log_var / 2) * N(0, 1): the noise recovered from each
        z_mean, z_log_var = xs
        for out in (got, ref):
            noise = (out - z_mean) / np.exp(0.5 * z_log_var)
            assert noise.shape == (2000, 3) and abs(noise.mean()) < 0.1 and abs(noise.std() - 1) < 0.1
        assert not np.allclose(got, ref)  # random, as in Keras
        return
    assert_close_rel(got, ref, 1e-5)


def test_lambda_from_a_keras3_file(tmp_path):
    """Keras 3 (torch backend) stores ``{"class_name": "__lambda__", ...}``; it loads in safe mode."""
    keras = keras_module("keras3")
    inp = keras.Input(shape=(6,))
    fn = lambda x: keras.ops.sqrt(keras.ops.abs(x)) * 2.0 - keras.ops.mean(x[:, 1:], axis=1, keepdims=True) / 3.0  # noqa: E731
    out = keras.layers.Lambda(fn, output_shape=(6,))(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(out))
    path = tmp_path / "lam.keras"
    model.save(path)
    fn = model.get_config()["layers"][1]["config"]["function"]
    assert fn["class_name"] == "__lambda__"
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    ref = keras.ops.convert_to_numpy(model(x))
    ours = tkio.load_model(path)
    assert_close_rel(ours.predict(x), ref, 1e-5)


def test_keras1_raw_text_and_keras3_forms_read_the_same_bytes():
    code, _, _ = BYTECODE["3.11"]["normalise"]
    raw = base64.b64decode(code).decode("raw_unicode_escape")  # Keras 1's storage of the same bytes
    k3 = {"function": {"class_name": "__lambda__", "config": {"code": code, "defaults": None, "closure": None}}}
    exprs = {repr(translate_lambda(cfg, 2).expr) for cfg in (
        {"function": [raw, None, None], "function_type": "lambda"}, {"function": code, "function_type": "lambda"}, k3)}  # fmt: skip
    assert len(exprs) == 1


def test_export_never_writes_a_lambda(tmp_path):
    code, _, _ = BYTECODE["3.11"]["grey"]
    layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 24, 40, 3]}},
              {"class_name": "Lambda", "config": {"name": "lam", "function": [code, None, None],
                                                  "function_type": "lambda"}}]  # fmt: skip
    model = tkio.model_from_json(json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": layers}}))
    for name in ("out.h5", "out.keras"):
        with pytest.raises(tkio.UnsupportedLayerError, match="never writes a Lambda"):
            tkio.save_model(model, tmp_path / name)
        assert not (tmp_path / name).exists()
    with pytest.raises(tkio.UnsupportedLayerError, match="never writes a Lambda"):
        tkio.to_json(torch.nn.Sequential(model.module, torch.nn.Identity()), input_shape=(24, 40, 3))


_TRUTH = r"""
import base64, json, marshal, sys
codes = json.loads(sys.stdin.read())
out = {}
for name, code in codes.items():
    co = marshal.loads(base64.b64decode(code))
    consts = tuple(c for c in co.co_consts if not hasattr(c, "co_code"))
    out[name] = [co.co_argcount, list(co.co_names), list(co.co_varnames), list(co.co_freevars), co.co_code.hex(),
                 repr(consts), co.co_name]
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", VERSIONS)
def test_reader_agrees_with_that_cpythons_own_marshal(version):
    """Where pyenv has that interpreter: its ``marshal.loads`` and our reader see the same code objects."""
    import subprocess

    from torchkeras_io._keras.pycode.codeobj import CodeObject, load_code

    exe = sorted((pathlib.Path.home() / ".pyenv" / "versions").glob(f"{version}.*/bin/python"))
    if not exe:
        pytest.skip(f"no CPython {version} here")
    codes = {name: value[0] for name, value in BYTECODE[version].items()}
    proc = subprocess.run([str(exe[0]), "-c", _TRUTH], input=json.dumps(codes), capture_output=True, text=True)
    truth = json.loads(proc.stdout)
    for name, code in codes.items():
        co = load_code(base64.b64decode(code))
        consts = tuple(c for c in co.consts if not isinstance(c, CodeObject))
        ours = [co.argcount, list(co.names), list(co.varnames), list(co.freevars), co.code.hex(), repr(consts), co.name]
        assert ours == truth[name], (version, name)


def test_docs_list_every_supported_function():
    from torchkeras_io._keras.pycode import FUNCTIONS

    page = (ROOT.parent / "docs" / "lambdas.md").read_text()
    for name in FUNCTIONS:
        last = name.rsplit(".", 1)[-1]
        assert f"`{last}`" in page or f"_{last.split('_', 1)[-1]}`" in page or f"{last}`" in page, name


def test_output_shape_function_is_not_needed():
    """Keras 2 may store ``output_shape`` as bytecode too (``output_shape_type: "lambda"``), Keras 3 as a
    ``__lambda__``: shapes come from running the translation, so it is never read (nor run)."""
    code, _, _ = BYTECODE["3.8"]["normalise"]
    shape_fn, _, _ = BYTECODE["3.8"]["refuse_import"]  # would be refused if it were translated
    for output_shape, kind in (([shape_fn, None, None], "lambda"),
                               ({"class_name": "__lambda__", "config": {"code": shape_fn}}, "raw")):  # fmt: skip
        layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 4]}},
                  {"class_name": "Lambda", "config": {"name": "lam", "function": [code, None, None],
                                                      "function_type": "lambda", "output_shape": output_shape,
                                                      "output_shape_type": kind}}]  # fmt: skip
        model = tkio.model_from_json(
            json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": layers}})
        )
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        assert_close_rel(model.predict(x), x / 127.5 - 1.0, 1e-6)
