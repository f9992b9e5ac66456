"""Write tests/data/lambda_bytecode.json: the marshalled code of the test Lambdas, per CPython version.

Run once with the interpreters of pyenv (3.6 to 3.13): each compiles the same sources with its own
``compile`` and ``marshal.dumps`` (this script runs in the test tooling only, never in the library).
The JSON keeps the base64 bytes, so the tests read real 3.6–3.13 bytecode without those interpreters.
"""

import json
import pathlib
import subprocess
import sys

SOURCES = {
    "normalise": "lambda x: x / 127.5 - 1.0",
    "centre": "lambda x: x / 255.0 - 0.5",
    "crop": "lambda x: x[:, 6:-5, :, :]",
    "channel": "lambda x: x[..., 0:1]",
    "flip": "lambda x: x[:, ::-1, 1:, ...]",
    "negative_index": "lambda x: x[:, -1]",
    "newaxis": "lambda x: x[:, None, :, 2]",
    "resize_v1": "lambda x: K.tf.image.resize_images(x, (12, 20))",
    "resize_v2": "lambda x: tf.image.resize(x, (5, 7))",
    "euclidean": (
        "def euclidean_distance(vects):\n"
        "    x, y = vects\n"
        "    sum_square = K.sum(K.square(x - y), axis=1, keepdims=True)\n"
        "    return K.sqrt(K.maximum(sum_square, K.epsilon()))\n"
    ),
    "l2": "lambda t: K.l2_normalize(t, axis=-1)",
    "concat": "lambda xs: K.concatenate([xs[0], xs[1] * 2.0], axis=-1)",
    "expand": "lambda x: K.expand_dims(x, 1)",
    "quantise": "lambda x, levels: K.round(K.clip(x, 0.0, 1.0) * levels) / levels",
    "sampling": (
        "def sampling(args):\n"
        "    z_mean, z_log_var = args\n"
        "    epsilon = K.random_normal(shape=(K.shape(z_mean)[0], 3), mean=0., stddev=1.0)\n"
        "    return z_mean + K.exp(0.5 * z_log_var) * epsilon\n"
    ),
    "mean": "lambda x: K.mean(x, axis=1)",
    "powers": "lambda x: -K.abs(x) ** 2 + K.pow(x, 3) * np.pi",
    "log_exp": "lambda x: K.log(K.exp(x) + 1.0) * math.e",
    "defaults": "lambda x, a=2.0, b=-1: x * a + b",
    "compare": "lambda x: K.cast(x > 0.5, 'float32') - K.cast(x <= -0.5, dtype='float32')",
    "grey": "lambda x: x[:, :, :, 0:1] * 0.299 + x[:, :, :, 1:2] * 0.587 + x[..., 2:3] * 0.114",
    "tf_ops": "lambda x: tf.reduce_sum(tf.square(x), axis=-1, keepdims=True) + tf.math.sqrt(tf.abs(x))",
    "list_const": "lambda x: x - [0.1, 0.2, 0.3]",
    "floordiv_mod": "lambda x: x // 0.25 + x % 0.3",
    "shape_slice": "lambda x: x[:, : K.shape(x)[1] // 2]",
    "closure": "(lambda scale: (lambda x: x * scale))(3.0)",
    # refused: each names what it cannot translate
    "refuse_branch": "lambda x: x if x is not None else 0",
    "refuse_function": "lambda x: K.foo(x)",
    "refuse_import": "lambda x: __import__('os').system('true')",
    "refuse_comprehension": "lambda x: [v for v in x]",
    "refuse_method": "lambda x: x.numpy()",
}

CHILD = r"""
import base64, json, marshal, sys
sources = json.loads(sys.stdin.read())
out = {}
for name, src in sources.items():
    if src.startswith("def "):
        scope = {}
        exec(src, scope)
        fn = [v for k, v in scope.items() if k != "__builtins__"][0]
    else:
        fn = eval(src)
    closure = [c.cell_contents for c in fn.__closure__] if fn.__closure__ else None
    defaults = list(fn.__defaults__) if fn.__defaults__ else None
    out[name] = [base64.b64encode(marshal.dumps(fn.__code__)).decode(), defaults, closure]
print(json.dumps({"%d.%d" % sys.version_info[:2]: out}))
"""


def main() -> None:
    root = pathlib.Path.home() / ".pyenv" / "versions"
    result = {}
    for exe in sorted(root.glob("3.*/bin/python")):
        proc = subprocess.run([str(exe), "-c", CHILD], input=json.dumps(SOURCES), capture_output=True, text=True)
        if proc.returncode:
            sys.exit(proc.stderr)
        result.update(json.loads(proc.stdout))
    data = {"sources": SOURCES, "bytecode": result}
    path = pathlib.Path(__file__).with_name("lambda_bytecode.json")
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(path, sorted(result))


if __name__ == "__main__":
    main()
