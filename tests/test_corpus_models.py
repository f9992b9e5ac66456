"""Real Keras files from ../shared/corpus as native torch models, against Keras's own outputs.

Full-model files go through ``load_model``; weights-only files with a sidecar architecture
through ``model_from_json`` + ``load_weights`` (in order, as Keras users do). Where
``refs/`` holds the outputs tf-keras or Keras 3 computed, ours must match them.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

import torchkeras_io as tkio

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is absent")

# Files no build can reproduce, and exactly why. Everything else must load and match its refs.
EXPECTED_UNSUPPORTED = {
    "fastmachinelearning__example-models__keras_garnet_3layer_weights.h5": "GarNetStack",
    "fastmachinelearning__example-models__keras_hgq_mnist_heterogeneous.h5": "FixedPointQuantizer",
}
NOT_A_GRAPH = {  # subclassed Keras model: the file has no layer graph to rebuild
    "Primadya__sistemrekomendasidicoding__recommender_model.h5": "not a Sequential or Functional",
}


def _manifest() -> dict:
    if not CORPUS.is_dir():
        return {}
    with open(CORPUS / "MANIFEST.tsv", newline="") as fh:
        return {row["filename"]: row for row in csv.DictReader(fh, delimiter="\t")}


def _arch(name: str):
    path = CORPUS / "arch" / f"{name}.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return data if isinstance(data, str) else json.dumps(data)


def _cases():
    out = []
    for name, row in sorted(_manifest().items()):
        if row["kind"] == "full model" or _arch(name) is not None:
            out.append(name)
    return out


def _refs(name: str):
    for flavour in ("tf_keras", "keras3"):
        path = CORPUS / "refs" / f"{name}.{flavour}.npz"
        if path.exists():
            data = np.load(path)
            xs = [data[k] for k in sorted((k for k in data.files if k.startswith("x")), key=lambda k: int(k[1:]))]
            ys = [data[k] for k in sorted((k for k in data.files if k.startswith("y")), key=lambda k: int(k[1:]))]
            yield flavour, xs, ys


def _load(name: str) -> tkio.Model:
    path = CORPUS / "files" / name
    arch = _arch(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tkio.TorchKerasIOWarning)
        if arch is None:
            return tkio.load_model(path, compile=False)
        model = tkio.model_from_json(arch)
        report = model.load_weights(path)
        assert report.all_loaded, str(report)
        model.eval()
        return model


@pytest.mark.parametrize("name", _cases(), ids=lambda n: n[:70])
def test_corpus_model(name):
    row = _manifest()[name]
    if name in EXPECTED_UNSUPPORTED:
        with pytest.raises(tkio.UnsupportedLayerError, match=EXPECTED_UNSUPPORTED[name]):
            _load(name)
        return
    if name in NOT_A_GRAPH:
        with pytest.raises(tkio.FileFormatError, match=NOT_A_GRAPH[name]):
            _load(name)
        return
    model = _load(name)
    recurrent = any(k in row["layer_kinds"] for k in ("LSTM", "GRU", "SimpleRNN", "RNN"))
    rtol = 1e-4 if recurrent else 1e-5
    for flavour, xs, ys in _refs(name):
        out = model.predict(xs if len(xs) > 1 else xs[0])
        out = out if isinstance(out, list) else [out]
        assert len(out) == len(ys)
        for o, y in zip(out, ys):
            err = float(np.abs(o - y).max()) / max(float(np.abs(y).max()), 1e-30)
            assert o.shape == y.shape and err <= rtol, f"{flavour}: relative error {err:.3g} > {rtol}"
