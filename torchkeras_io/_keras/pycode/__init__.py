"""Keras ``Lambda`` layers read without running them: stored bytecode -> an expression tree.

A Keras ``Lambda`` stores its Python function as a marshalled code object: Keras 1 as
``raw_unicode_escape`` text, Keras 2 as base64, both in ``config["function"] = [code, defaults,
closure]`` with ``function_type: "lambda"``; Keras 3 as ``{"class_name": "__lambda__", "config":
{"code": ..., "defaults": ..., "closure": ...}}``. ``config["arguments"]`` holds extra keyword
arguments. This package reads those bytes with its own bounded marshal reader
(:mod:`.unmarshal`), interprets the code object of CPython 3.5–3.12 (:mod:`.codeobj`,
:mod:`.opcodes`) and walks its instructions symbolically (:mod:`.symbolic`) into a tree of
supported operations. Nothing here imports torch, and nothing from the file is ever executed:
no ``marshal``, ``eval``, ``exec`` or ``pickle``.

The subset is written here rather than taken from a cross-version decompiler (``xdis``): it is a
few hundred lines, it adds no runtime dependency, and its limits on hostile input (sizes,
nesting, back-references) are our own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from torchkeras_io._keras.pycode.codeobj import CodeObject, decode_function
from torchkeras_io._keras.pycode.symbolic import FUNCTIONS, Node, evaluate, json_value
from torchkeras_io._keras.pycode.unmarshal import PyCodeError

__all__ = ["FUNCTIONS", "LambdaProgram", "Node", "PyCodeError", "translate_lambda"]


@dataclasses.dataclass(frozen=True)
class LambdaProgram:
    """A translated Lambda: ``expr`` over ``Node("input")`` (the layer's input, a tensor or a list
    of them), the CPython version(s) the bytecode came from, and the function's name."""

    expr: Any
    python: str
    name: str
    random: bool


def _stored(config: dict) -> tuple:
    fn = config.get("function")
    if isinstance(fn, dict):  # Keras 3
        if fn.get("class_name") != "__lambda__":
            raise PyCodeError(f"the function is a named Python object ({str(fn.get('class_name'))[:80]!r}), "
                              "not stored bytecode")  # fmt: skip
        inner = fn.get("config")
        if not isinstance(inner, dict):
            raise PyCodeError("Keras 3 __lambda__ without a config")
        return inner.get("code"), inner.get("defaults"), inner.get("closure")
    ftype = config.get("function_type", "lambda")
    if ftype != "lambda":
        raise PyCodeError(f"function_type {str(ftype)[:40]!r}: only stored bytecode ('lambda') can be translated")
    if isinstance(fn, (list, tuple)) and len(fn) == 3:
        return fn[0], fn[1], fn[2]
    if isinstance(fn, str):
        return fn, None, None
    raise PyCodeError("the stored function is neither [code, defaults, closure] nor code")


def translate_lambda(config: dict, generation: int = 2) -> LambdaProgram:
    """The expression a Lambda layer's stored function computes. Raises :class:`PyCodeError`
    naming the first unsupported instruction or function, or what is wrong with the bytes."""
    if not isinstance(config, dict):
        raise PyCodeError("the Lambda config is not a dict")
    code, defaults, closure = _stored(config)
    co = decode_function(code, generation)
    arguments = config.get("arguments") or {}
    if not isinstance(arguments, dict):
        raise PyCodeError("'arguments' is not a dict")
    bound = _bind_arguments(co, arguments, defaults)
    closure = json_value(closure, "closure") if closure is not None else ()
    if not isinstance(closure, tuple):
        raise PyCodeError("the closure is not a list")
    expr = evaluate(co, bound, closure)
    return LambdaProgram(expr, co.python, co.name, _uses_random(expr))


def _bind_arguments(co: CodeObject, arguments: dict, defaults: Optional[list]) -> dict:
    positional = co.varnames[: co.argcount]
    kwonly = co.varnames[co.argcount : co.argcount + co.kwonlyargcount]
    if not positional:
        raise PyCodeError("the function takes no positional argument for the layer's input")
    defaults = json_value(defaults, "defaults") if defaults is not None else ()
    if not isinstance(defaults, tuple) or len(defaults) > len(positional):
        raise PyCodeError("the stored defaults do not fit the function's arguments")
    by_default = dict(zip(positional[len(positional) - len(defaults) :], defaults))
    unknown = [k for k in arguments if k not in positional[1:] + kwonly]
    if unknown:
        raise PyCodeError(f"'arguments' names {unknown[:3]}, which the function does not take")
    bound: dict = {positional[0]: Node("input")}
    for name in positional[1:] + kwonly:
        if name in arguments:
            bound[name] = json_value(arguments[name], f"argument '{name}'")
        elif name == "mask":
            bound[name] = None
        elif name == "training":
            bound[name] = False
        elif name in by_default:
            bound[name] = by_default[name]
        else:
            raise PyCodeError(f"no value for the function's argument '{name}'")
    return bound


def _uses_random(expr) -> bool:
    seen, todo = 0, [expr]
    while todo and seen < 100_000:
        v = todo.pop()
        seen += 1
        if isinstance(v, Node):
            if v.op == "call" and v.args and str(v.args[0]).startswith("random_"):
                return True
            todo.extend(v.args)
            todo.extend(v.kwargs.values())
        elif isinstance(v, (tuple, list)):
            todo.extend(v)
    return False
