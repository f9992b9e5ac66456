"""Forward time of models on both sides of a conversion, in one run.

Keras -> torch: Keras models converted by torchkeras_io against the same models run by Keras 3 on
its torch backend (ratio: ours / Keras 3; below 1 is faster). torch -> Keras (``tv_resnet50``):
torchvision's ResNet50 exported by ``save_model`` to ``.keras`` and run by Keras 3, against the
torch module itself (ratio: Keras 3 / torch).

    python benchmarks/bench_inference.py [--repeat 20] [--batch 32] [--app-batch 4] [--models cnn,lstm,resnet50,tv_resnet50]

``resnet50`` is keras.applications.ResNet50 (``weights=None``, 224x224 RGB, 1000 classes),
timed at the smaller ``--app-batch``: a CPU forward of it takes about as long as a few hundred of
the small models'.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import torchkeras_io as tkio  # noqa: E402


def cnn():
    L = keras.layers
    inp = keras.Input((64, 64, 3))
    x = inp
    for filters in (32, 64, 128):
        x = L.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = L.BatchNormalization()(x)
        x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(128, activation="relu")(x)
    return keras.Model(inp, L.Dense(10, activation="softmax")(x), name="cnn"), (64, 64, 3), "float32"


def lstm():
    L = keras.layers
    inp = keras.Input((100,))
    x = L.Embedding(5000, 64)(inp)
    x = L.LSTM(128, return_sequences=True)(x)
    x = L.LSTM(64)(x)
    return keras.Model(inp, L.Dense(1, activation="sigmoid")(x), name="lstm"), (100,), "int32"


def resnet50():
    model = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classes=1000)
    return model, (224, 224, 3), "float32"


def tv_resnet50():
    import sys
    from pathlib import Path

    # tests/conftest.py makes torchvision's CUDA wheel importable beside CPU torch (it explains how)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import conftest  # noqa: F401
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval(), (3, 224, 224), "float32"


MODELS = {"cnn": cnn, "lstm": lstm, "resnet50": resnet50}
EXPORTS = {"tv_resnet50": tv_resnet50}  # torch -> Keras
APPLICATIONS = {"resnet50", "tv_resnet50"}  # timed at --app-batch


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--app-batch", type=int, default=4, help="batch of the keras.applications models")
    every = {**MODELS, **EXPORTS}
    parser.add_argument("--models", default=",".join(every), help=f"comma-separated, of {', '.join(every)}")
    args = parser.parse_args()
    names = [n for n in args.models.split(",") if n]
    unknown = sorted(set(names) - set(every))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(every)}")
    print(f"torch {torch.__version__}, keras {keras.__version__} ({keras.backend.backend()}), "
          f"{torch.get_num_threads()} threads, batch {args.batch} (applications: {args.app_batch})")  # fmt: skip
    print(f"{'model':11s} {'batch':>5s} {'keras3 ms':>10s} {'tkio ms':>10s} {'ratio':>7s} {'max rel diff':>13s}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            if name in EXPORTS:
                exported(name, args, tmp)
                continue
            kmodel, shape, dtype = MODELS[name]()
            batch = args.app_batch if name in APPLICATIONS else args.batch
            rng = np.random.default_rng(0)
            if dtype == "int32":
                x = rng.integers(1, 5000, size=(batch,) + shape).astype("int32")
            else:
                x = rng.normal(size=(batch,) + shape).astype("float32")
            path = os.path.join(tmp, f"{kmodel.name}.h5")
            kmodel.save(path)
            ours = tkio.load_model(path, compile=False).module
            xt = torch.from_numpy(x)
            with torch.no_grad():
                t_keras = timeit(lambda: kmodel(xt, training=False), args.repeat)
                t_ours = timeit(lambda: ours(xt), args.repeat)
                ref = keras.ops.convert_to_numpy(kmodel(xt, training=False))
                got = ours(xt).numpy()
            diff = float(np.abs(got - ref).max() / np.abs(ref).max())
            print(
                f"{name:11s} {batch:5d} {t_keras * 1e3:10.2f} {t_ours * 1e3:10.2f} {t_ours / t_keras:7.2f} {diff:13.2e}"
            )


def exported(name: str, args, tmp: str) -> None:
    """A torch model exported to ``.keras`` and run by Keras 3, against the torch model."""
    module, shape, _ = EXPORTS[name]()
    path = os.path.join(tmp, f"{name}.keras")
    tkio.save_model(module, path, input_shape=shape)
    kmodel = keras.saving.load_model(path)
    xt = torch.from_numpy(np.random.default_rng(0).normal(size=(args.app_batch,) + shape).astype("float32"))
    with torch.no_grad():
        t_torch = timeit(lambda: module(xt), args.repeat)
        t_keras = timeit(lambda: kmodel(xt, training=False), args.repeat)
        ref = module(xt).numpy()
        got = keras.ops.convert_to_numpy(kmodel(xt, training=False))
    diff = float(np.abs(got - ref).max() / np.abs(ref).max())
    # here the Keras model is the converted one: the ratio is Keras 3 / torch
    print(f"{name:11s} {args.app_batch:5d} {t_keras * 1e3:10.2f} {'torch ' + format(t_torch * 1e3, '.2f'):>10s} "
          f"{t_keras / t_torch:7.2f} {diff:13.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
