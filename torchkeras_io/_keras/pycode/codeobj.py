"""Code objects of CPython 3.5–3.12 from marshal bytes, and their instructions.

How the Python version is found (no magic number is stored with a Keras function, only the
marshalled code object):

1. The code object's layout. 3.5–3.7 write 5 int32 fields then ``code, consts, names, varnames,
   freevars, cellvars, filename, name, firstlineno, lnotab``; 3.8–3.10 write 6 int32 fields
   (``posonlyargcount`` added) and the same objects; 3.11–3.12 write 5 int32 fields then ``code,
   consts, names, localsplusnames, localspluskinds, filename, name, qualname, firstlineno,
   linetable, exceptiontable``. Each layout is tried; the one whose fields all have the right types
   and that consumes the bytes exactly is the one (the three cannot all fit the same bytes).
2. Within a layout, the bytecode. 3.6+ is wordcode (2-byte units, no-argument opcodes with a zero
   argument byte); 3.5 puts a 16-bit argument after opcodes >= 90 only, so 3.5 code does not parse
   as valid wordcode (its zero argument high bytes read as the undefined opcode 0) and vice versa.
   3.7 is 3.6 plus ``LOAD_METHOD`` / ``CALL_METHOD``; 3.9–3.10 are 3.8 plus ``LIST_EXTEND``,
   ``LIST_TO_TUPLE``, ``IS_OP``, ... (the tables agree on every instruction the translator
   supports). 3.11 and 3.12 are told apart by the number of inline ``CACHE`` units after
   instructions (``LOAD_GLOBAL``: 5 vs 4, ``BINARY_SUBSCR``: 4 vs 1, ``CALL``: 4 vs 3, ...) and by
   3.11's ``PRECALL``; 3.13 and later (``RESUME`` is no longer 151) are refused.
3. The Keras version in the file is a hint only: it breaks a tie in favour of the older
   Python for Keras 1 files.
"""

from __future__ import annotations

import dataclasses

from torchkeras_io._keras.pycode.opcodes import CACHES, HAVE_ARGUMENT, OPNAMES
from torchkeras_io._keras.pycode.unmarshal import PyCodeError, RawCode, read_code_bytes

MAX_CODE_UNITS = 20_000  # instructions in one function
CO_VARARGS, CO_VARKEYWORDS = 0x04, 0x08
CO_FAST_FREE, CO_FAST_CELL = 0x80, 0x40


@dataclasses.dataclass(frozen=True)
class CodeObject:
    version: tuple  # (3, minor): the bytecode dialect the instructions are read with
    python: str  # the CPython versions this bytecode can come from, for messages ("3.6–3.7")
    argcount: int
    kwonlyargcount: int
    flags: int
    code: bytes
    consts: tuple
    names: tuple
    varnames: tuple  # locals, arguments first
    freevars: tuple
    cellvars: tuple
    name: str
    localsplus: tuple = ()  # 3.11+: every local, cell and free variable, as LOAD_FAST / LOAD_DEREF index them

    @property
    def arg_names(self) -> tuple:
        return self.varnames[: self.argcount + self.kwonlyargcount]


@dataclasses.dataclass(frozen=True)
class Instr:
    offset: int
    name: str
    arg: int
    caches: int = 0  # inline CACHE units that followed it (3.11+)


_LAYOUTS = ("py38", "py311", "py36")  # the order they are tried in


def _str_tuple(v) -> bool:
    return isinstance(v, tuple) and all(isinstance(s, str) for s in v)


def _valid(raw, layout: str) -> bool:
    if not isinstance(raw, RawCode):
        return False
    f = raw.fields
    if not (isinstance(f[0], bytes) and isinstance(f[1], tuple) and _str_tuple(f[2])):
        return False
    if layout == "py311":
        ok = _str_tuple(f[3]) and isinstance(f[4], bytes) and len(f[4]) == len(f[3])
        ok = ok and all(isinstance(s, str) for s in f[5:8]) and isinstance(f[8], int)
        ok = ok and isinstance(f[9], bytes) and isinstance(f[10], bytes)
    else:
        ok = all(_str_tuple(x) for x in f[3:6]) and all(isinstance(s, str) for s in f[6:8])
        ok = ok and isinstance(f[8], int) and isinstance(f[9], bytes)
    if not ok or any(i < 0 for i in raw.ints[:3]):
        return False
    return all(_valid(c, layout) for c in f[1] if isinstance(c, RawCode))


def load_code(data: bytes, keras_generation: int = 2) -> CodeObject:
    """The code object marshalled in ``data`` (see the module docstring for how its CPython
    version is found). Raises :class:`PyCodeError` on anything else."""
    errors = []
    for layout in _LAYOUTS:
        try:
            raw = read_code_bytes(data, layout)
        except PyCodeError as exc:
            errors.append(str(exc))
            continue
        if _valid(raw, layout):
            return _code_object(raw, keras_generation)
        errors.append(f"not a code object of the {layout} layout")
    # the same hostile-input message whichever layout got furthest
    raise PyCodeError("not a marshalled Python 3.5–3.12 code object: " + errors[0])


def _code_object(raw: RawCode, keras_generation: int) -> CodeObject:
    f, ints = raw.fields, raw.ints
    if raw.layout == "py311":
        argcount, kwonly, flags = ints[0], ints[2], ints[4]
        names, kinds = f[3], f[4]
        varnames = tuple(n for n, k in zip(names, kinds) if not k & (CO_FAST_FREE | CO_FAST_CELL))
        freevars = tuple(n for n, k in zip(names, kinds) if k & CO_FAST_FREE)
        cellvars = tuple(n for n, k in zip(names, kinds) if k & CO_FAST_CELL)
        version, python = _version_311(f[0])
        localsplus = names
    else:
        if raw.layout == "py38":
            argcount, kwonly, flags = ints[0], ints[2], ints[5]
        else:
            argcount, kwonly, flags = ints[0], ints[1], ints[4]
        varnames, freevars, cellvars = f[3], f[4], f[5]
        version, python = _version_old(raw.layout, f[0], keras_generation)
        localsplus = ()
    consts = tuple(_code_object(c, keras_generation) if isinstance(c, RawCode) else c for c in f[1])
    name = f[6] if raw.layout == "py311" else f[7]
    return CodeObject(version, python, argcount, kwonly, flags, f[0], consts, f[2], varnames, freevars, cellvars,
                      name, localsplus)  # fmt: skip


def _wordcode_ok(code: bytes, table: dict) -> bool:
    if len(code) % 2:
        return False
    for i in range(0, len(code), 2):
        op, arg = code[i], code[i + 1]
        if op not in table or (op < HAVE_ARGUMENT and arg):
            return False
    return True


def _py35_ok(code: bytes) -> bool:
    table, i = OPNAMES[(3, 5)], 0
    while i < len(code):
        if code[i] not in table:
            return False
        i += 3 if code[i] >= HAVE_ARGUMENT else 1
    return i == len(code)


def _version_old(layout: str, code: bytes, keras_generation: int) -> tuple:
    if layout == "py38":
        newer = {82, 117, 118, 162, 164, 165}  # LIST_TO_TUPLE, IS_OP, CONTAINS_OP, LIST_EXTEND, SET_*, DICT_*
        ops = set(code[0::2])
        if _wordcode_ok(code, OPNAMES[(3, 10)]) and ops & newer:
            return (3, 10), "3.9–3.10"
        if _wordcode_ok(code, OPNAMES[(3, 8)]):
            return (3, 8), "3.8–3.10"
        if _wordcode_ok(code, OPNAMES[(3, 10)]):
            return (3, 10), "3.9–3.10"
        raise PyCodeError("bytecode of the 3.8–3.10 code-object layout holds undefined opcodes")
    wordcode, old = _wordcode_ok(code, OPNAMES[(3, 7)]), _py35_ok(code)
    if wordcode and (not old or keras_generation >= 2):
        if 160 in set(code[0::2]) or 161 in set(code[0::2]):
            return (3, 7), "3.7"
        return (3, 7), "3.6–3.7"
    if old:
        return (3, 5), "3.5"
    raise PyCodeError("bytecode of the 3.5–3.7 code-object layout holds undefined opcodes")


def _units(code: bytes) -> list:
    return [(code[i], code[i + 1]) for i in range(0, len(code) - 1, 2)]


def _version_311(code: bytes) -> tuple:
    if len(code) % 2:
        raise PyCodeError("bytecode of odd length")
    units = _units(code)
    firsts = [op for op, _ in units if op not in (0, 135, 149)][:1]  # before RESUME: MAKE_CELL, COPY_FREE_VARS
    if firsts != [151]:
        raise PyCodeError("bytecode of the 3.11+ layout that does not start with 3.11/3.12's RESUME "
                          "(CPython 3.13 and later are not supported)")  # fmt: skip
    scores = {}
    for version in ((3, 11), (3, 12)):
        table, caches = OPNAMES[version], CACHES[version]
        ok, i = True, 0
        while i < len(units):
            op = units[i][0]
            if op not in table:
                ok = False
                break
            want = caches.get(table[op], 0)
            got = 0
            while i + 1 + got < len(units) and units[i + 1 + got][0] == 0 and got < want:
                got += 1
            if got != want:
                ok = False
                break
            i += 1 + want
        scores[version] = ok
    if scores[(3, 12)] and not scores[(3, 11)]:
        return (3, 12), "3.12"
    if scores[(3, 11)] and not scores[(3, 12)]:
        return (3, 11), "3.11"
    if scores[(3, 11)]:
        return (3, 12), "3.11–3.12"  # no instruction with caches: the two read the same
    raise PyCodeError("bytecode of the 3.11+ layout that neither 3.11 nor 3.12 can have written")


def instructions(co: CodeObject) -> list:
    """The instructions of ``co`` with EXTENDED_ARG folded in and CACHE units counted, not listed."""
    table = OPNAMES[co.version]
    code, out, ext = co.code, [], 0
    if co.version == (3, 5):
        i = 0
        while i < len(code):
            op, at = code[i], i
            if op >= HAVE_ARGUMENT:
                if i + 3 > len(code):
                    raise PyCodeError("truncated instruction")
                arg = code[i + 1] | (code[i + 2] << 8) | ext
                i += 3
            else:
                arg, i = 0, i + 1
            name = table.get(op, f"<opcode {op}>")
            if name == "EXTENDED_ARG":
                ext = arg << 16
                if ext >= 1 << 32:
                    raise PyCodeError("EXTENDED_ARG argument overflow")
                continue
            ext = 0
            out.append(Instr(at, name, arg))
            if len(out) > MAX_CODE_UNITS:
                raise PyCodeError(f"more than {MAX_CODE_UNITS} instructions")
        return out
    units = _units(code)
    if len(units) > MAX_CODE_UNITS:
        raise PyCodeError(f"more than {MAX_CODE_UNITS} instructions")
    for i, (op, a) in enumerate(units):
        name = table.get(op, f"<opcode {op}>")
        if name == "CACHE":
            if out:
                out[-1] = dataclasses.replace(out[-1], caches=out[-1].caches + 1)
            continue
        arg = a | ext
        if name == "EXTENDED_ARG":
            ext = arg << 8
            if ext >= 1 << 32:
                raise PyCodeError("EXTENDED_ARG argument overflow")
            continue
        ext = 0
        out.append(Instr(2 * i, name, arg))
    return out


def decode_function(value, keras_generation: int = 2) -> CodeObject:
    """The code object stored for a Keras function: Keras 1 ``raw_unicode_escape`` text of the
    marshal bytes, or Keras 2/3 base64 of them (with or without line breaks)."""
    data = function_bytes(value)
    return load_code(data, keras_generation)


def function_bytes(value) -> bytes:
    import base64
    import binascii

    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise PyCodeError(f"stored function code is a {type(value).__name__}, not text")
    if len(value) > 4 << 20:
        raise PyCodeError("stored function code is too long")
    if value[:1] == "\xe3":
        return _raw_text(value)  # Keras 1: marshal bytes as raw_unicode_escape text (0xe3 = 'c' | FLAG_REF)
    try:
        return base64.b64decode("".join(value.split()).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise PyCodeError("stored function code is neither base64 nor raw marshal text") from exc


def _raw_text(value: str) -> bytes:
    try:
        return value.encode("raw_unicode_escape")
    except UnicodeEncodeError as exc:
        raise PyCodeError("stored function code is neither base64 nor raw marshal text") from exc
