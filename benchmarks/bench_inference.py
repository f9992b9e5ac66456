"""Forward time of Keras models converted by torchkeras_io against the same models run by Keras 3
on its torch backend, in one run (ratios: ours / Keras 3; below 1 is faster).

    python benchmarks/bench_inference.py [--repeat 20] [--batch 32]
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
    args = parser.parse_args()
    print(f"torch {torch.__version__}, keras {keras.__version__} ({keras.backend.backend()}), "
          f"{torch.get_num_threads()} threads, batch {args.batch}")  # fmt: skip
    print(f"{'model':8s} {'keras3 ms':>10s} {'tkio ms':>10s} {'ratio':>7s} {'max rel diff':>13s}")
    with tempfile.TemporaryDirectory() as tmp:
        for make in (cnn, lstm):
            kmodel, shape, dtype = make()
            rng = np.random.default_rng(0)
            if dtype == "int32":
                x = rng.integers(1, 5000, size=(args.batch,) + shape).astype("int32")
            else:
                x = rng.normal(size=(args.batch,) + shape).astype("float32")
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
            print(f"{kmodel.name:8s} {t_keras * 1e3:10.2f} {t_ours * 1e3:10.2f} {t_ours / t_keras:7.2f} {diff:13.2e}")


if __name__ == "__main__":
    main()
