"""Our `.keras` (and `.h5`) re-save of models whose nested models are called several times predicts as the original."""

from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import pytest
from conftest import (
    ORACLE_WARNINGS,
    assert_outputs_close,
    keras_module,
    randomize_keras_weights,
)

import torchkeras_io as tkio
from torchkeras_io.errors import TorchKerasIOWarning

pytestmark = [*ORACLE_WARNINGS]

# float32 through a few Dense/BatchNormalization layers: the brief's bound, relative to the output scale
RTOL = 1e-5


def _siamese(k):
    """A Functional encoder called on two inputs (both outputs kept), a Functional decoder called on
    both codes and on its own output, and two nested Sequentials: one built on an Input, one built
    by its first call (tf-keras counts that one's calls from 0, the others from 1), each called twice."""
    layers = k.layers
    ein = k.Input((6,), name="enc_in")
    h = layers.BatchNormalization(name="enc_bn")(layers.Dense(8, activation="tanh", name="enc_d1")(ein))
    enc = k.Model(ein, layers.Dense(5, name="enc_d2")(h), name="encoder")
    din = k.Input((5,), name="dec_in")
    dec = k.Model(din, layers.Dense(5, activation="sigmoid", name="dec_d")(din), name="decoder")
    built = k.Sequential([k.Input((5,)), layers.Dense(5, name="sq_d1"), layers.Dense(5, name="sq_d2")], name="seq_in")
    lazy = k.Sequential([layers.Dense(5, name="lz_d1"), layers.Dense(3, name="lz_d2")], name="seq_lazy")
    a, b = k.Input((6,), name="a"), k.Input((6,), name="b")
    ea, eb = enc(a), enc(b)
    da, db = dec(ea), dec(eb)
    dd = dec(da)  # a nested model's output feeding another call of the same model
    sa = built(eb)
    sb = built(sa)
    la, lb = lazy(dd), lazy(ea)
    diff = layers.Subtract(name="diff")([ea, eb])
    out = [ea, eb, da, db, dd, sb, la, layers.Dense(2, name="head")(layers.Concatenate(name="cat")([diff, sa, lb]))]
    return k.Model([a, b], out, name="siamese")


def _outer_nested(k):
    """A Functional model holding a nested, twice-called Functional, itself nested and called twice."""
    layers = k.layers
    iin = k.Input((4,), name="inner_in")
    inner = k.Model(iin, layers.Dense(4, activation="relu", name="inner_d")(iin), name="inner")
    min_ = k.Input((4,), name="mid_in")
    y = inner(inner(min_))
    mid = k.Model(min_, layers.Add(name="mid_add")([y, inner(min_)]), name="mid")
    x = k.Input((4,), name="x")
    first = mid(x)
    return k.Model(x, [mid(first), first], name="outer")


MODELS = {"siamese": (_siamese, 2, 6), "nested_twice": (_outer_nested, 1, 4)}


def _build(flavor, name, seed):
    k = keras_module(flavor)
    factory, n_inputs, width = MODELS[name]
    model = factory(k)
    rng = np.random.default_rng(seed)
    randomize_keras_weights(model, rng)
    feed = [rng.normal(0.0, 1.0, (3, width)).astype("float32") for _ in range(n_inputs)]
    return k, model, feed if n_inputs > 1 else feed[0]


def _close(got, ref):
    assert_outputs_close(got, ref, RTOL)


def _nested_refs(path) -> list:
    """Every ``[layer, node, tensor]`` our ``config.json`` gives a nested model, as (where, ref)."""
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    out = []

    def walk(cfg):
        inner = cfg.get("config", {})
        layers = inner.get("layers", []) if isinstance(inner, dict) else []
        models = {e["name"] for e in layers if e.get("class_name") in ("Functional", "Sequential")}
        for entry in layers:
            for node in entry.get("inbound_nodes", []):
                stack = [node]
                while stack:
                    x = stack.pop()
                    if isinstance(x, dict) and x.get("class_name") == "__keras_tensor__":
                        ref = x["config"]["keras_history"]
                        if ref[0] in models:
                            out.append(("args", ref))
                    elif isinstance(x, dict):
                        stack += list(x.values())
                    elif isinstance(x, list):
                        stack += x
            if entry.get("class_name") in ("Functional", "Sequential"):
                walk(entry)
        if cfg.get("class_name") == "Functional":
            refs = inner["output_layers"]
            refs = [refs] if isinstance(refs[0], str) else refs
            out.extend(("output_layers", r) for r in refs if r[0] in models)

    walk(config)
    return out


#: (oracle that builds the model, its file format): Keras 3 writes its own node form in both
ORIGINS = [("tf_keras", "h5"), ("keras3", "keras"), ("keras3", "h5")]


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("flavor,ext", ORIGINS, ids=[f"{f}-{e}" for f, e in ORIGINS])
def test_keras_save_of_nested_models_called_twice(flavor, ext, name, tmp_path):
    k, model, feed = _build(flavor, name, seed=len(name) + len(flavor) + len(ext))
    ref = model.predict(feed, verbose=0)
    model.save(tmp_path / f"orig.{ext}")
    ours = tkio.load_model(tmp_path / f"orig.{ext}", compile=False)
    _close(ours.predict(feed), ref)

    tkio.save_model(ours, tmp_path / "ours.keras")
    keras3 = keras_module("keras3")
    _close(keras3.saving.load_model(tmp_path / "ours.keras", compile=False).predict(feed, verbose=0), ref)
    _close(tkio.load_model(tmp_path / "ours.keras", compile=False).predict(feed), ref)
    # with every output compared above, a wrong index would already show; this names it directly
    refs = _nested_refs(tmp_path / "ours.keras")
    assert refs and all(r[1] >= 0 for _, r in refs)

    # the legacy file goes back to the Keras whose config dialect it keeps (tf-keras cannot read Keras 3's)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*only Keras 3 loads this file", TorchKerasIOWarning)
        tkio.save_model(ours, tmp_path / "ours.h5")
    _close(k.models.load_model(tmp_path / "ours.h5", compile=False).predict(feed, verbose=0), ref)
    _close(tkio.load_model(tmp_path / "ours.h5", compile=False).predict(feed), ref)


def test_keras3_numbering_of_our_file_matches_keras3s_own(tmp_path):
    """Keras 3's own save of the model (from our ``.keras``) writes the very node indices we wrote."""
    _, model, feed = _build("tf_keras", "siamese", seed=7)
    model.save(tmp_path / "orig.h5")
    tkio.save_model(tkio.load_model(tmp_path / "orig.h5", compile=False), tmp_path / "ours.keras")
    keras3 = keras_module("keras3")
    keras3.saving.load_model(tmp_path / "ours.keras", compile=False).save(tmp_path / "k3.keras")
    assert sorted(map(str, _nested_refs(tmp_path / "ours.keras"))) == sorted(
        map(str, _nested_refs(tmp_path / "k3.keras"))
    )
