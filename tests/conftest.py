"""Shared test helpers. Append only; keep it small."""

import os

# Keras 3 reads its backend once, at first import: it must be torch before anything imports keras.
os.environ["KERAS_BACKEND"] = "torch"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

#: the oracles of a parametrized interop test
BOTH = ("tf_keras", "keras3")
K3 = ("keras3",)
TFK = ("tf_keras",)
#: warnings the oracles print while writing and reading legacy HDF5 (``pytestmark = [*ORACLE_WARNINGS, ...]``)
ORACLE_WARNINGS = [
    pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _np(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def assert_close_rel(actual, expected, rtol):
    """max|actual - expected| <= rtol * max|expected| (numpy arrays or torch tensors)."""
    a, e = _np(actual), _np(expected)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    scale = float(np.max(np.abs(e))) if e.size else 0.0
    err = float(np.max(np.abs(a - e))) if e.size else 0.0
    assert scale > 0, "reference output is all zeros: the comparison would prove nothing"
    assert err <= rtol * scale, f"max|a-b| = {err:.3g} > {rtol:g} * max|ref| ({scale:.3g}); rel {err / scale:.3g}"


def keras_module(flavor: str):
    """The oracle: tf_keras ("tf_keras") or Keras 3 on its torch backend ("keras3")."""
    if flavor == "tf_keras":
        return pytest.importorskip("tf_keras")
    keras = pytest.importorskip("keras")
    assert keras.backend.backend() == "torch", "keras was imported before conftest set KERAS_BACKEND=torch"
    return keras


def as_list(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def randomize_keras_weights(model, rng: np.random.Generator) -> None:
    """Non-trivial weights for a Keras model: positive variances, gammas of both signs, the rest N(0, 0.5)."""
    values = []
    for w, v in zip(model.weights, model.get_weights()):
        if "variance" in w.name:
            values.append(rng.uniform(0.3, 2.0, v.shape))
        elif "gamma" in w.name:
            values.append(rng.uniform(0.5, 1.5, v.shape) * rng.choice([-1, 1], v.shape))
        elif np.issubdtype(v.dtype, np.floating):
            values.append(rng.normal(0.0, 0.5, v.shape))
        else:
            values.append(v)
    model.set_weights([np.asarray(a, dtype=v.dtype) for a, v in zip(values, model.get_weights())])


def keras_then_ours(model, feed, path) -> tuple:
    """(Keras's outputs on ``feed``, ours after ``model.save(path)`` and ``tkio.load_model``), as lists."""
    import torchkeras_io as tkio

    ref = as_list(model.predict(feed, verbose=0))
    model.save(path)
    got = as_list(tkio.load_model(path, compile=False).predict(feed))
    assert len(got) == len(ref)
    return ref, got
