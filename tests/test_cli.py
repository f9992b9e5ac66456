"""The ``torchkeras-io`` command line: inspect, convert, diff, verify, against files real Keras wrote."""

from __future__ import annotations

import inspect as pyinspect
import json
import os
import pathlib
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from conftest import bits_equal

import torchkeras_io as tkio
from torchkeras_io import cli

CORPUS = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "files"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is absent")


def run(capsys, *argv) -> tuple:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv) -> tuple:
    code, out, err = run(capsys, *argv, "--json")
    return code, json.loads(out)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tfk(tmp_path_factory):
    """A compiled, trained tf-keras functional CNN saved as a full model and as weights."""
    from conftest import keras_module

    K = keras_module("tf_keras")
    d = tmp_path_factory.mktemp("tfk")
    K.utils.set_random_seed(1)
    x = K.Input((6, 6, 2), name="img")
    y = K.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    y = K.layers.BatchNormalization(name="bn")(y)
    y = K.layers.Flatten(name="flat")(y)
    y = K.layers.Dense(3, name="head")(y)
    model = K.Model(x, y, name="net")
    model.compile(optimizer=K.optimizers.Adam(1e-3), loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((8, 6, 6, 2)), rng.standard_normal((8, 3)), epochs=1, batch_size=4, verbose=0)
    model.save(d / "model.h5")
    model.save_weights(d / "weights.h5")
    expected = [(layer.name, [(w.name, tuple(w.shape)) for w in layer.weights]) for layer in model.layers]
    return {"dir": d, "model": d / "model.h5", "weights": d / "weights.h5", "expected": expected, "keras": model}


@pytest.fixture(scope="module")
def k3(tmp_path_factory):
    """A compiled, trained Keras 3 Sequential model as .keras, .weights.h5 and legacy .h5."""
    from conftest import keras_module

    K = keras_module("keras3")
    d = tmp_path_factory.mktemp("k3")
    K.utils.set_random_seed(2)
    model = K.Sequential([K.Input((5,)), K.layers.Dense(7, activation="tanh", name="d1"),
                          K.layers.BatchNormalization(name="bn"), K.layers.Dense(2, name="d2")])  # fmt: skip
    model.compile(optimizer=K.optimizers.Adam(1e-3), loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.standard_normal((8, 5)), rng.standard_normal((8, 2)), epochs=1, batch_size=4, verbose=0)
    model.save(d / "model.keras")
    model.save(d / "model.h5")
    model.save_weights(d / "model.weights.h5")
    shapes = {layer.name: [tuple(w.shape) for w in layer.weights] for layer in model.layers}
    return {"dir": d, "keras": model, "K": K, "shapes": shapes, "n_opt": len(model.optimizer.variables)}


# ------------------------------------------------------------------------------------- inspect
def test_inspect_json_legacy_full_model_tf_keras(tfk, capsys):
    code, info = run_json(capsys, "inspect", tfk["model"])
    assert code == 0
    assert info["format"] == "h5-model"
    assert info["keras_version"].startswith("2.")
    assert info["model"] == {"class_name": "Functional", "name": "net"}
    got = [(x["name"], [(w["name"], tuple(w["shape"])) for w in x["weights"]]) for x in info["layers"]]
    assert got == tfk["expected"]  # every layer, exact weight names and shapes, in Keras's order
    classes = {x["name"]: x["class_name"] for x in info["layers"]}
    assert classes == {"img": "InputLayer", "conv": "Conv2D", "bn": "BatchNormalization", "flat": "Flatten",
                       "head": "Dense"}  # fmt: skip
    conv_kernel = info["layers"][1]["weights"][0]
    assert conv_kernel["dtype"] == "float32" and conv_kernel["nbytes"] == 3 * 3 * 2 * 4 * 4
    assert info["num_params"] == sum(int(np.prod(s)) for _, ws in tfk["expected"] for _, s in ws)
    assert info["training_config"]["loss"] == "mse"
    opt = info["optimizer"]
    assert opt["class_name"].endswith("Adam") and opt["iterations"] == 2  # 8 samples, batch 4, 1 epoch
    assert opt["variables"] == len(tfk["keras"].optimizer.variables)


def test_inspect_text_legacy(tfk, capsys):
    code, out, _ = run(capsys, "inspect", tfk["model"])
    assert code == 0
    assert "Keras legacy HDF5, full model" in out and "Functional 'net'" in out
    for line in ("conv (Conv2D)", "conv/kernel:0", "(3, 3, 2, 4)", "bn/moving_variance:0", "head/bias:0"):
        assert line in out
    assert "Adam (learning_rate=0.001" in out
    assert "iterations 2" in out
    code, out, _ = run(capsys, "inspect", tfk["weights"])
    assert code == 0 and "weights only" in out and "training config: none" in out and "optimizer state: none" in out


def test_inspect_keras3_formats(k3, capsys):
    for name in ("model.keras", "model.weights.h5"):
        code, info = run_json(capsys, "inspect", k3["dir"] / name)
        assert code == 0
        assert info["format"] == ("keras" if name.endswith(".keras") else "weights-h5")
        got = {x["keras_name"]: [tuple(w["shape"]) for w in x["weights"]] for x in info["layers"]}
        assert got == {k: v for k, v in k3["shapes"].items() if v}
        assert info["optimizer"]["variables"] == k3["n_opt"]
        assert info["optimizer"]["iterations"] == 2
    code, info = run_json(capsys, "inspect", k3["dir"] / "model.keras")
    assert info["keras_version"] == k3["K"].__version__
    assert info["model"]["class_name"] == "Sequential"
    assert {x["class_name"] for x in info["layers"]} == {"Dense", "BatchNormalization"}
    code, info = run_json(capsys, "inspect", k3["dir"] / "model.h5")
    assert info["format"] == "h5-model" and info["keras_version"].startswith("3.")


def test_inspect_keras_archive_without_weights_member(k3, tmp_path, capsys):
    """An archive whose weights Keras kept elsewhere (npz, sharded) shows its config alone."""
    import zipfile

    bare = tmp_path / "bare.keras"
    with zipfile.ZipFile(k3["dir"] / "model.keras") as src, zipfile.ZipFile(bare, "w") as dst:
        for member in src.namelist():
            if member != "model.weights.h5":
                dst.writestr(member, src.read(member))
    code, info = run_json(capsys, "inspect", bare)
    assert code == 0 and info["format"] == "keras" and info["layers"] == []
    assert info["keras_version"] == k3["K"].__version__ and info["model"]["class_name"] == "Sequential"
    code, out, _ = run(capsys, "inspect", bare)
    assert code == 0 and "no model.weights.h5 member" in out


@needs_corpus
def test_inspect_corpus_files(capsys):
    path = CORPUS / "Exitarr__collaborative-filtering-based-Recommendation-System__best_model.weights.h5"
    code, info = run_json(capsys, "inspect", path)
    assert code == 0 and info["format"] == "weights-h5"
    with h5py.File(path, "r") as f:
        want = {}
        f.visititems(lambda n, o: want.__setitem__(n, o.shape) if isinstance(o, h5py.Dataset) else None)
    model_vars = {k: v for k, v in want.items() if k.startswith("layers/")}
    got = {f"{x['name']}/{w['name']}": tuple(w["shape"]) for x in info["layers"] for w in x["weights"]}
    assert got == model_vars
    assert info["optimizer"]["variables"] == len([k for k in want if k.startswith("optimizer/")])

    path = CORPUS / "Anmol6__kaggle-seizure-competition__models_LSTMSpectro_P3_test3.h5"  # Keras 1.1.1
    code, info = run_json(capsys, "inspect", path)
    assert code == 0 and info["format"] == "h5-model" and info["keras_version"] == "1.1.1"
    layers = _h5_layers(path)
    assert [x["name"] for x in info["layers"]] == list(layers) and info["num_weights"] == sum(layers.values())
    assert "Bidirectional" in {x["class_name"] for x in info["layers"]}


def _h5_layers(path) -> dict:
    """{layer: number of weights} of a legacy HDF5 file, read with h5py as Keras reads it (a long
    list attribute may be split into ``name0``, ``name1``, ...)."""

    def strings(attrs, name) -> list:
        if name in attrs:
            values = list(attrs[name])
        else:
            values, i = [], 0
            while f"{name}{i}" in attrs:
                values += list(attrs[f"{name}{i}"])
                i += 1
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        return {name: len(strings(group[name].attrs, "weight_names")) for name in strings(group.attrs, "layer_names")}


@needs_corpus
def test_inspect_every_corpus_file(capsys):
    for path in sorted(CORPUS.iterdir()):
        code, info = run_json(capsys, "inspect", path)
        assert code == 0, path
        if info["format"].startswith("h5-"):
            layers = _h5_layers(path)
            assert [x["name"] for x in info["layers"]][: len(layers)] == list(layers)
            assert info["num_weights"] >= sum(layers.values())


# ------------------------------------------------------------------------------------- convert
def _corpus_full_models() -> list:
    manifest = CORPUS.parent / "MANIFEST.tsv"
    if not manifest.is_file():
        return [pytest.param("", marks=needs_corpus)]
    header, *rows = [line.split("\t") for line in manifest.read_text(encoding="utf-8").splitlines() if line]
    name, kind = header.index("filename"), header.index("kind")
    return [row[name] for row in rows if row[kind] == "full model"]


@needs_corpus
@pytest.mark.parametrize("name", _corpus_full_models())
def test_convert_every_corpus_model_to_keras3(name, tmp_path, capsys):
    """Every full model of any Keras generation converts to .keras, or is refused with the library's
    own error (a layer with no torch or Keras 3 equivalent), never with a traceback."""
    code, _, err = run(capsys, "convert", "-q", CORPUS / name, tmp_path / "out.keras")
    assert code in (0, 3), err
    assert (code == 0) == (tmp_path / "out.keras").is_file()
    assert code == 0 or "torchkeras-io: error:" in err
    if name.startswith("Anmol6__"):  # Keras 1.1.1: a list-style Sequential config of Keras 1 layers
        # read as Keras 2, whose LSTM gates use tf-keras's hard_sigmoid: not Keras 3's
        assert code == 3 and "layer 'forward_lstm_1': its inner_activation 'hard_sigmoid'" in err, err
    if name.startswith("nanoporetech__"):  # Keras 2.0.8: a list-style Sequential config, GRUs as above
        assert code == 3 and "layer 'gru1': its recurrent_activation 'hard_sigmoid'" in err, err


def test_convert_full_model_to_safetensors_and_torch_bit_exact(tfk, tmp_path, capsys):
    from safetensors.torch import load_file

    want = tkio.load_model(tfk["model"], compile=False).module.state_dict()
    code, out, _ = run(capsys, "convert", tfk["model"], tmp_path / "m.safetensors")
    assert code == 0 and "torch state_dict" in out
    got = load_file(tmp_path / "m.safetensors")
    assert set(got) == set(want)
    assert all(bits_equal(got[k], want[k]) for k in want)
    code, _, _ = run(capsys, "convert", tfk["model"], tmp_path / "m.pt")
    got = torch.load(tmp_path / "m.pt", weights_only=True)
    assert list(got) == list(want) and all(bits_equal(got[k], want[k]) for k in want)
    # the torch file loads straight into the rebuilt module
    fresh = tkio.load_model(tfk["model"], compile=False)
    fresh.module.load_state_dict(got)
    code, info = run_json(capsys, "inspect", tmp_path / "m.pt")
    assert info["format"] == "torch" and info["names"] == "torch"
    assert {f"{x['name']}.{w['name']}" for x in info["layers"] for w in x["weights"]} == set(want)
    # torch names cannot become Keras weights without the module's code
    code, _, err = run(capsys, "convert", tmp_path / "m.safetensors", tmp_path / "back.h5")
    assert code == 2 and "save_weights(module" in err and not (tmp_path / "back.h5").exists()


def test_convert_weights_round_trip_loads_in_tf_keras(tfk, tmp_path, capsys):
    st, back = tmp_path / "w.safetensors", tmp_path / "back.h5"
    assert run(capsys, "convert", tfk["weights"], st)[0] == 0
    code, info = run_json(capsys, "inspect", st)
    assert info["names"] == "keras"
    assert [(x["name"], [w["name"] for w in x["weights"]]) for x in info["layers"]] == [
        (name, [w.split("/", 1)[1].removesuffix(":0") for w, _ in ws]) for name, ws in tfk["expected"]
    ]  # Keras order kept, layers without weights too
    assert run(capsys, "convert", st, back)[0] == 0
    code, out, _ = run(capsys, "diff", tfk["weights"], back)
    assert code == 0 and "SAME" in out
    # tf-keras itself reads the converted file into its own model
    model = tfk["keras"]
    before = [w.numpy().copy() for w in model.weights]
    for w in model.weights:
        w.assign(np.zeros(w.shape, w.dtype.as_numpy_dtype))
    model.load_weights(str(back))
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))


def test_convert_to_keras3_formats(k3, tmp_path, capsys):
    K, src = k3["K"], k3["dir"] / "model.h5"
    supported = "format" in pyinspect.signature(tkio.save_weights).parameters
    code, _, err = run(capsys, "convert", src, tmp_path / "out.weights.h5")
    if not supported:
        assert code == 2 and "cannot write Keras 3" in err
        return
    assert code == 0
    clone = K.models.clone_model(k3["keras"])
    clone.load_weights(str(tmp_path / "out.weights.h5"))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(k3["keras"].weights, clone.weights))
    if "format" in pyinspect.signature(tkio.save_model).parameters:
        assert run(capsys, "convert", src, tmp_path / "out.keras")[0] == 0
        reloaded = K.models.load_model(str(tmp_path / "out.keras"), compile=False)
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(k3["keras"].weights,
                                                                                reloaded.weights))  # fmt: skip


def test_convert_keeps_training_state(tfk, tmp_path, capsys):
    from conftest import keras_module

    out, bare = tmp_path / "out.h5", tmp_path / "bare.h5"
    code, _, err = run(capsys, "convert", tfk["model"], out)
    assert code == 0 and "Traceback" not in err
    code, info = run_json(capsys, "inspect", out)
    assert info["training_config"]["loss"] == "mse"
    assert info["optimizer"]["iterations"] == 2 and info["optimizer"]["variables"] == len(
        tfk["keras"].optimizer.variables
    )
    reloaded = keras_module("tf_keras").models.load_model(str(out))  # tf-keras compiles from it
    assert int(reloaded.optimizer.iterations.numpy()) == 2
    x = np.random.default_rng(5).standard_normal((2, 6, 6, 2)).astype("float32")
    from conftest import assert_close_rel

    assert_close_rel(reloaded.predict(x, verbose=0), tfk["keras"].predict(x, verbose=0), 1e-5)
    assert run(capsys, "convert", tfk["model"], bare, "--no-optimizer", "-q")[0] == 0
    code, info = run_json(capsys, "inspect", bare)
    assert info["optimizer"] is None and info["training_config"] is None


def test_convert_keras3_archive_to_safetensors_and_h5(k3, tmp_path, capsys):
    from conftest import assert_close_rel
    from safetensors.torch import load_file

    src = k3["dir"] / "model.keras"
    want = tkio.load_model(src, compile=False).module.state_dict()
    assert run(capsys, "convert", src, tmp_path / "m.safetensors", "-q")[0] == 0
    got = load_file(tmp_path / "m.safetensors")
    assert set(got) == set(want) and all(bits_equal(got[k], want[k]) for k in want)
    assert run(capsys, "convert", src, tmp_path / "m.h5", "-q")[0] == 0
    reloaded = k3["K"].models.load_model(str(tmp_path / "m.h5"), compile=False)  # Keras 3 reads the legacy file
    x = np.random.default_rng(4).standard_normal((3, 5)).astype("float32")
    assert_close_rel(reloaded.predict(x, verbose=0), k3["keras"].predict(x, verbose=0), 1e-5)
    # a Keras 3 store's variables have no names: back to the legacy layout needs the model
    assert run(capsys, "convert", k3["dir"] / "model.weights.h5", tmp_path / "w.safetensors", "-q")[0] == 0
    code, _, err = run(capsys, "convert", tmp_path / "w.safetensors", tmp_path / "w.h5")
    assert code == 2 and "needs the model" in err


def test_convert_refusals(tfk, tmp_path, capsys):
    code, _, err = run(capsys, "convert", tfk["model"], tmp_path / "x.onnx")
    assert code == 2 and "output format" in err
    (tmp_path / "exists.h5").write_bytes(b"x")
    code, _, err = run(capsys, "convert", tfk["model"], tmp_path / "exists.h5")
    assert code == 2 and "--force" in err and (tmp_path / "exists.h5").read_bytes() == b"x"
    code, _, err = run(capsys, "convert", tfk["weights"], tmp_path / "w.keras")
    assert code == 2


def test_inspect_and_diff_sharded_store(tmp_path, capsys):
    module = torch.nn.Sequential(torch.nn.Linear(6, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 3))
    tkio.save_weights(module, tmp_path / "m.weights.json", max_shard_size=2e-6)  # GB: 2 shards
    tkio.save_weights(module, tmp_path / "m.weights.h5")
    code, info = run_json(capsys, "inspect", tmp_path / "m.weights.json")
    assert code == 0 and info["format"] == "weights-json" and info["shards"] == 2
    assert [len(x["weights"]) for x in info["layers"]] == [2, 5, 2]  # BatchNorm: 4 Keras vars + torch extra
    assert run(capsys, "diff", tmp_path / "m.weights.json", tmp_path / "m.weights.h5")[0] == 0


# ---------------------------------------------------------------------------------------- diff
def test_diff_one_changed_weight(tfk, tmp_path, capsys):
    changed = tmp_path / "changed.h5"
    shutil.copy(tfk["model"], changed)
    with h5py.File(changed, "r+") as f:
        dset = f["model_weights/head/head/kernel:0"]
        data = dset[()]
        data[1, 2] += 0.25
        dset[...] = data
    code, out, _ = run(capsys, "diff", tfk["model"], changed)
    assert code == 1 and "head" in out and "DIFFERENT" in out
    code, report = run_json(capsys, "diff", tfk["model"], changed)
    assert code == 1 and not report["equal"]
    different = [r for r in report["weights"] if r["status"] != "identical"]
    assert [(r["layer"], r["weight"], r["status"]) for r in different] == [("head", "kernel", "different")]
    assert different[0]["max_abs"] == pytest.approx(0.25, rel=1e-6)
    assert report["counts"]["identical"] == sum(len(ws) for _, ws in tfk["expected"]) - 1
    assert run(capsys, "diff", tfk["model"], changed, "--atol", "0.3")[0] == 0
    code, out, _ = run(capsys, "diff", tfk["model"], tfk["model"])
    assert code == 0 and "SAME" in out


def test_diff_across_formats_and_layers(k3, tfk, tmp_path, capsys):
    # tf-keras's legacy file against the Keras 3 store torchkeras_io converts it to: the same weights,
    # Flatten/Input layers without weights and torch-only state (num_batches_tracked) are no difference
    assert run(capsys, "convert", tfk["model"], tmp_path / "v3.weights.h5", "-q")[0] == 0
    code, report = run_json(capsys, "diff", tfk["model"], tmp_path / "v3.weights.h5")
    assert code == 0 and report["counts"]["identical"] == 8 and report["counts"]["torch_only"] == 1
    # Keras 3 .keras and .weights.h5 of one model hold the same variables
    code, out, _ = run(capsys, "diff", k3["dir"] / "model.keras", k3["dir"] / "model.weights.h5")
    assert code == 0, out
    # a legacy .h5 and a Keras 3 store: layers by their Keras names, unnamed variables by position
    code, report = run_json(capsys, "diff", k3["dir"] / "model.h5", k3["dir"] / "model.weights.h5")
    assert code == 0 and report["counts"]["identical"] == 8
    assert [(r["layer"], r["weight"]) for r in report["weights"]][:2] == [
        ("d1", "kernel|vars/0"),
        ("d1", "bias|vars/1"),
    ]
    code, report = run_json(capsys, "diff", tfk["weights"], k3["dir"] / "model.h5")
    assert code == 1
    status = {(r["layer"], r["weight"]): r["status"] for r in report["weights"]}
    assert status[("conv", None)] == "only_a" and status[("d1", None)] == "only_b"
    assert status[("bn", "gamma")] == "shape"  # (4,) against (7,)


# -------------------------------------------------------------------------------------- verify
def test_verify_tf_keras_model(tfk, capsys):
    code, out, err = run(capsys, "verify", tfk["model"])
    assert code == 0, out + err
    assert "reference: tf_keras" in out and "VERIFIED" in out
    code, result = run_json(capsys, "verify", tfk["model"], "--seed", "3", "--batch-size", "2")
    assert code == 0 and result["ok"] and result["keras"] == "tf_keras" and result["inputs"] == [[2, 6, 6, 2]]
    assert [r["layer"] for r in result["layers"]] == ["conv", "bn", "flat", "head"]
    assert all(r["status"] == "ok" and r["max_rel"] <= 1e-5 for r in result["layers"])
    assert result["outputs"][0]["shape"] == [2, 3]


def test_verify_keras3_model(k3, capsys):
    code, result = run_json(capsys, "verify", k3["dir"] / "model.h5")
    assert code == 0 and result["keras"] == "keras3"
    assert [r["layer"] for r in result["layers"]] == ["d1", "bn", "d2"]


def test_verify_detects_a_wrong_layer(tfk, monkeypatch, capsys):
    real = tkio.load_model

    def perturbed(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            model.module.layers["head"].weight[0, 0] += 0.5
        return model

    monkeypatch.setattr(tkio, "load_model", perturbed)
    code, result = run_json(capsys, "verify", tfk["model"])
    assert code == 1 and not result["ok"]
    status = {r["layer"]: r["status"] for r in result["layers"]}
    assert status == {"conv": "ok", "bn": "ok", "flat": "ok", "head": "DIFF"}


def test_verify_without_a_usable_keras(tfk, monkeypatch, capsys):
    for name in ("tf_keras", "keras"):
        monkeypatch.setitem(sys.modules, name, None)  # `import keras` raises ImportError
    code, result = run_json(capsys, "verify", tfk["model"])
    assert code == 0 and result["keras"] is None and "only loading" in result["note"]
    code, _, err = run(capsys, "verify", tfk["model"], "--keras", "keras3")
    assert code == 2 and "not importable" in err

    class Refusing:  # a Keras that cannot read the file: verification fails, it does not pass silently
        class models:
            @staticmethod
            def load_model(path, compile):
                raise ValueError("Unknown layer")

    for name in ("tf_keras", "keras"):
        monkeypatch.setitem(sys.modules, name, Refusing)
    code, result = run_json(capsys, "verify", tfk["model"])
    assert code == 1 and not result["ok"] and "could not load" in result["note"]


def test_verify_corrupt_copy(tfk, tmp_path, capsys):
    broken = tmp_path / "broken.h5"
    data = tfk["model"].read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    code, out, err = run(capsys, "verify", broken)
    assert code == 3 and out == ""
    assert err.startswith("torchkeras-io: error: ") and "broken.h5" in err and err.count("\n") == 1
    assert "Traceback" not in err


@needs_corpus
def test_verify_corpus_model_with_shared_nested_model(capsys):
    # three inputs through one nested Functional encoder (a shared layer: its first call is compared)
    path = CORPUS / "AdityaDutt__Bird-Song-Classification__model_checkpoint.h5"
    code, result = run_json(capsys, "verify", path, "--batch-size", "2")
    assert code == 0 and result["ok"] and result["keras"] == "tf_keras", result
    assert result["inputs"] == [[2, 345, 163]] * 3
    assert {r["layer"]: r["status"] for r in result["layers"]} == {"model": "ok", "concatenate": "ok"}


# ------------------------------------------------------------------------------ errors and help
def test_errors_and_exit_codes(tmp_path, capsys):
    assert run(capsys)[0] == 2
    assert run(capsys, "inspect")[0] == 2
    code, _, err = run(capsys, "inspect", tmp_path / "missing.h5")
    assert code == 3 and "missing.h5" in err and "Traceback" not in err
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"hello, not a checkpoint" * 4)
    code, _, err = run(capsys, "inspect", junk)
    assert code == 3 and "unknown format" in err
    pickled = tmp_path / "old.pt"
    pickled.write_bytes(b"\x80\x02}q\x00.")
    code, _, err = run(capsys, "inspect", pickled)
    assert code == 3 and "pickle" in err
    with pytest.raises(tkio.FileFormatError):
        cli.main(["--debug", "inspect", str(junk)])
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "exit codes" in out and "2  usage error" in out
    code, out, _ = run(capsys, "convert", "--help")
    assert code == 0 and "save_weights(module" in out


def test_installed_command_and_module(tmp_path):
    script = shutil.which("torchkeras-io") or str(pathlib.Path(sys.executable).parent / "torchkeras-io")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0 and "inspect" in res.stdout and "exit codes" in res.stdout
    res = subprocess.run([sys.executable, "-m", "torchkeras_io", "diff", "nope_a.h5", "nope_b.h5"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)  # fmt: skip
    assert res.returncode == 3 and res.stderr.startswith("torchkeras-io: error:")
