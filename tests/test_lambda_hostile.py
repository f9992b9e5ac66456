"""Hostile Lambda bytecode (truncated, mutated, nested, huge, cyclic, unknown opcodes) ends quickly in our own errors, and nothing from the file ever runs.

The reader of stored functions (``torchkeras_io._keras.pycode``) gets bytes an attacker chose. Every
case here must end in :class:`PyCodeError` (a ``ValueError``; as a model,
:class:`~torchkeras_io.UnsupportedLayerError`) within a time bound, or translate to something
harmless: never another exception, a hang, a large allocation, or code execution (a sentinel file
a payload would write). The package itself holds no ``marshal`` / ``eval`` / ``exec`` / ``pickle``
(the AST scan of ``test_no_unsafe_calls.py`` covers this package; checked here too).
"""

from __future__ import annotations

import base64
import json
import marshal
import pathlib
import random
import struct
import time

import pytest
import torch

import torchkeras_io as tkio
from torchkeras_io._keras.pycode import PyCodeError, translate_lambda
from torchkeras_io._keras.pycode.codeobj import load_code
from torchkeras_io._keras.pycode.unmarshal import MAX_INPUT, read_code_bytes

ROOT = pathlib.Path(__file__).resolve().parent
DATA = json.loads((ROOT / "data" / "lambda_bytecode.json").read_text())
# a real Keras 2.2.4 Lambda (CPython 3.5 bytecode) from ../shared/corpus, inlined: x / 127.5 - 1.0
PY35 = base64.b64decode(
    "4wEAAAAAAAAAAQAAAAIAAABDAAAAcwwAAAB8AABkAQAbZAIAGFMpA07nAAAAAADgX0DnAAAAAAAA"
    "8D+pACkB2gF4cgMAAAByAwAAAPoHcnVuMi5wedoIPGxhbWJkYT5OAAAAcwAAAAA="
)
SAMPLES = {
    "3.5": PY35,
    **{v: base64.b64decode(DATA["bytecode"][v]["euclidean"][0]) for v in ("3.6", "3.8", "3.11", "3.12")},
}
CASE_SECONDS = 2.0


def _fn(src: str):
    """The code object of the lambda in ``src``, compiled here (test input, never the library's doing)."""
    return next(c for c in compile(src, "<t>", "eval").co_consts if hasattr(c, "co_code"))


def _translate(data: bytes):
    config = {"function": [base64.b64encode(data).decode(), None, None], "function_type": "lambda"}
    return translate_lambda(config, 2)


def _ends_well(data: bytes) -> str:
    """'ok' or 'error' (ours); anything else fails the test. Also bounded in time."""
    start = time.perf_counter()
    try:
        _translate(data)
        result = "ok"
    except PyCodeError:
        result = "error"
    assert time.perf_counter() - start < CASE_SECONDS
    return result


@pytest.mark.parametrize("version", sorted(SAMPLES))
def test_every_truncation_is_our_error(version):
    data = SAMPLES[version]
    for cut in range(len(data)):
        assert _ends_well(data[:cut]) == "error", cut


@pytest.mark.parametrize("version", sorted(SAMPLES))
def test_byte_mutations_end_in_our_error_or_translate(version):
    data, rng = SAMPLES[version], random.Random(version)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(400):
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256) if rng.random() < 0.7 else b[i] ^ (1 << rng.randrange(8))
        outcomes[_ends_well(bytes(b))] += 1
    assert outcomes["error"] > 0


def _code_object(version: str) -> bytes:
    return SAMPLES[version]


def test_deep_nesting_is_refused():
    deep = b"(\x01\x00\x00\x00" * 100_000 + b"N"
    with pytest.raises(PyCodeError, match="nested deeper"):
        read_code_bytes(deep, "py311")
    assert _ends_well(deep) == "error"


@pytest.mark.parametrize(
    "data, pattern",
    [
        (b"l" + struct.pack("<i", 1_000_000) + b"\x01\x00" * 10, "too large"),  # an int of 15 million bits
        (b"l" + struct.pack("<i", -(2**31)), "too large"),
        (b"s" + struct.pack("<i", 2**31 - 1) + b"abc", "exceeds the data left"),  # a 2 GB string
        (b"(" + struct.pack("<i", 2**31 - 1) + b"N", "exceeds the data left"),  # a tuple of 2 billion
        (b"[" + struct.pack("<i", -5), "exceeds the data left"),
        (b")" + b"\xff" + b"N", "exceeds the data left"),
        (b"\xa9\x01r\x00\x00\x00\x00", "reference cycle"),  # a tuple (with FLAG_REF) that holds itself
        (b"\xa9\x01r\x07\x00\x00\x00", "out of range"),
        (b"r" + struct.pack("<i", -1), "out of range"),
        (b"Q", "unknown marshal type"),
        (b"N" * 2, "trailing"),
        (b"N" + b"\x00" * MAX_INPUT, "limit"),
        (b"f\x05nan!!", "bad float"),
        (b"u" + struct.pack("<i", 2) + b"\xff\xfe", "bad string"),
        (b"<" + struct.pack("<i", 1) + b"[" + struct.pack("<i", 0), ""),  # a set holding a list: tuple, hashable
    ],
)
def test_malicious_marshal_values(data, pattern):
    start = time.perf_counter()
    try:
        read_code_bytes(data, "py311")
    except PyCodeError as exc:
        assert pattern in str(exc)
    else:
        assert pattern == ""
    assert time.perf_counter() - start < CASE_SECONDS
    assert _ends_well(data) == "error"  # none of them is a code object


def test_a_code_object_that_holds_itself_is_a_cycle():
    co = bytearray(SAMPLES["3.11"])
    consts_at = co.index(b"\xa9")  # the first small tuple with FLAG_REF after the code: its consts
    co[consts_at : consts_at + 2] = b"\xa9\x01r\x00\x00\x00\x00"[:2]
    data = bytes(co[: consts_at + 2]) + b"r\x00\x00\x00\x00" + bytes(co[consts_at + 2 :])
    assert _ends_well(data) == "error"


def _with_opcode(version: str, op: int) -> bytes:
    """``lambda x: x`` of that Python, its LOAD_FAST replaced by ``op`` (with argument 0)."""
    src = base64.b64decode(DATA["bytecode"][version]["normalise"][0]) if version != "3.5" else PY35
    co = load_code(src)
    load_fast = bytes([124, 0]) if version != "3.5" else bytes([124, 0, 0])
    i = co.code.index(load_fast)
    new_code = co.code[:i] + bytes([op]) + co.code[i + 1 :]
    return src.replace(co.code, new_code, 1)


@pytest.mark.parametrize("version", ["3.5", "3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12"])
def test_every_opcode_we_do_not_know_is_our_error(version):
    refused = 0
    for op in range(256):
        if op == 124:
            continue
        data = _with_opcode(version, op)
        refused += _ends_well(data) == "error"
    assert refused > 200  # nearly all: the few left are stack shuffles and no-ops


def test_unknown_opcode_is_named():
    data = _with_opcode("3.11", 7)  # defined in neither 3.11 nor 3.12
    with pytest.raises(PyCodeError, match="neither 3.11 nor 3.12"):
        _translate(data)
    data = _with_opcode("3.6", 200)  # not defined in 3.6
    with pytest.raises(PyCodeError, match="undefined opcodes"):
        _translate(data)
    data = _with_opcode("3.8", 108)  # IMPORT_NAME
    with pytest.raises(PyCodeError, match="IMPORT_NAME"):
        _translate(data)


def test_deep_expression_and_long_code_are_refused():
    deep = compile("lambda x: x" + " + 1" * 400, "<t>", "eval").co_consts[0]
    with pytest.raises(PyCodeError, match="nested deeper"):
        _translate(marshal.dumps(deep))
    many = compile("lambda x: (" + "x, " * 2000 + ")", "<t>", "eval").co_consts[0]
    assert _ends_well(marshal.dumps(many)) in ("ok", "error")


def test_huge_constant_arithmetic_is_refused():
    co = _fn("lambda x, a=9, b=3: x * a ** b")
    code = base64.b64encode(marshal.dumps(co)).decode()
    assert translate_lambda({"function": [code, [9, 3], None], "function_type": "lambda"}, 2)
    with pytest.raises(PyCodeError, match="too large"):
        translate_lambda({"function": [code, [9, 10**8], None], "function_type": "lambda"}, 2)
    with pytest.raises(PyCodeError, match="too large"):
        translate_lambda({"function": [code, [9, 3], None], "function_type": "lambda", "arguments": {"a": 2**4000}}, 2)
    with pytest.raises(PyCodeError, match="nested too deeply"):
        deep: list = [1]
        for _ in range(200):
            deep = [deep]
        translate_lambda({"function": [code, [9, 3], None], "function_type": "lambda", "arguments": {"a": deep}}, 2)


def test_string_repetition_is_not_folded():
    co = _fn("lambda x, s='a', n=10: x * len(s * n)")
    code = base64.b64encode(marshal.dumps(co)).decode()
    cfg = {"function": [code, ["a", 10**12], None], "function_type": "lambda"}
    with pytest.raises(PyCodeError):
        translate_lambda(cfg, 2)


def _model(function, **extra) -> str:
    layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 4]}},
              {"class_name": "Lambda", "config": {"name": "lam", "function": function, "function_type": "lambda",
                                                  **extra}}]  # fmt: skip
    return json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": layers}})


def test_payload_bytecode_never_runs(tmp_path):
    sentinel = tmp_path / "ran"
    src = f"lambda x: (__import__('pathlib').Path({str(sentinel)!r}).write_text('bytecode'), x)[1]"
    code = base64.b64encode(marshal.dumps(compile(src, "<hostile>", "eval").co_consts[0])).decode()
    for function in ([code, None, None], {"class_name": "__lambda__", "config": {"code": code}}):
        for safe_mode in (True, False):
            with pytest.raises(tkio.UnsupportedLayerError, match="__import__"):
                tkio.model_from_json(_model(function), safe_mode=safe_mode)
    assert not sentinel.exists()


def test_huge_random_draw_is_our_error():
    co = _fn("lambda x, n=2: x[:, :1] * K.random_normal((n, n))[0, 0]")
    code = base64.b64encode(marshal.dumps(co)).decode()
    start = time.perf_counter()
    model = tkio.model_from_json(_model([code, [2], None]))
    assert model.predict(torch.ones(3, 4).numpy()).shape == (3, 1)
    with pytest.raises(tkio.TorchKerasIOError):
        model = tkio.model_from_json(_model([code, [2], None], arguments={"n": 10**6}))
        model.predict(torch.ones(3, 4).numpy())
    assert time.perf_counter() - start < 10


def test_package_scan_covers_the_reader():
    from test_no_unsafe_calls import PACKAGE, _package_files, scan_source

    files = [p for p in _package_files() if "pycode" in p.parts or p.name == "lambdas.py"]
    assert {p.name for p in files} >= {"__init__.py", "unmarshal.py", "codeobj.py", "opcodes.py", "symbolic.py",
                                       "lambdas.py"}  # fmt: skip
    for path in files:
        source = path.read_text(encoding="utf-8")
        assert not scan_source(source, str(path.relative_to(PACKAGE.parent)))
        assert "import marshal" not in source and "marshal.loads" not in source
