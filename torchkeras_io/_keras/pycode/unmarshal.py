"""A bounded reader of the part of CPython's marshal format that code objects use.

This never calls :mod:`marshal` (which trusts its input and reads only its own Python version's
code objects). It reads the byte stream into plain Python values: ``None``, ``bool``, ``int``,
``float``, ``complex``, ``bytes``, ``str``, ``tuple``, ``frozenset`` (lists, dicts and sets come
back as tuples / tuples of pairs / frozensets: nothing read here is mutable, so no reference
cycle can be built), :data:`Ellipsis`, and :class:`RawCode` records for code objects, whose
fields :mod:`.codeobj` interprets per Python version.

Hostile input ends in :class:`PyCodeError`, never in another exception, a hang or a large
allocation: the input size, the nesting depth, the number of objects, the length of every string
and container (checked against the bytes left before anything is allocated) and the size of
integers are all bounded; a back-reference (``TYPE_REF``) must point at an object already read
completely (one still being read would be a cycle).
"""

from __future__ import annotations

import struct
from typing import Any, Optional

MAX_INPUT = 1 << 20  # bytes of marshal data
MAX_DEPTH = 48  # nesting of containers / code objects
MAX_OBJECTS = 200_000  # values read in all
MAX_LONG_DIGITS = 40  # 15-bit digits of a TYPE_LONG: 600 bits
FLAG_REF = 0x80


class PyCodeError(ValueError):
    """The stored function cannot be read or translated (the message says why)."""


class RawCode:
    """A code object as stored: ``ints`` (the leading 32-bit fields) and the marshalled fields
    after them, in order. :mod:`.codeobj` decides, per Python version, what they mean."""

    __slots__ = ("ints", "fields", "layout")

    def __init__(self, ints: tuple, fields: tuple, layout: str):
        self.ints, self.fields, self.layout = ints, fields, layout

    def __repr__(self) -> str:
        return f"RawCode(layout={self.layout!r}, ints={self.ints!r})"


_INCOMPLETE = object()  # the slot of a referenceable object still being read


class _Reader:
    def __init__(self, data: bytes, layout: str):
        self.data, self.pos, self.layout = data, 0, layout
        self.refs: list = []
        self.count = 0

    # ----------------------------------------------------------------------- primitives
    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PyCodeError(f"truncated marshal data (wanted {n} bytes at offset {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def _byte(self) -> int:
        return self._take(1)[0]

    def _int32(self) -> int:
        return struct.unpack("<i", self._take(4))[0]

    def _size(self, unit: int = 1) -> int:
        n = self._int32()
        if n < 0 or n * unit > len(self.data) - self.pos:
            raise PyCodeError(f"marshal size {n} at offset {self.pos - 4} exceeds the data left")
        return n

    # ----------------------------------------------------------------------- objects
    def read(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise PyCodeError(f"marshal data nested deeper than {MAX_DEPTH}")
        self.count += 1
        if self.count > MAX_OBJECTS:
            raise PyCodeError(f"marshal data holds more than {MAX_OBJECTS} objects")
        at = self.pos
        code = self._byte()
        flag, kind = code & FLAG_REF, chr(code & ~FLAG_REF)
        if kind == "r":
            index = self._int32()
            if not 0 <= index < len(self.refs):
                raise PyCodeError(f"marshal back-reference {index} at offset {at} is out of range")
            value = self.refs[index]
            if value is _INCOMPLETE:
                raise PyCodeError(f"marshal back-reference {index} at offset {at} is a reference cycle")
            return value
        slot: Optional[int] = None
        if flag:
            slot = len(self.refs)
            self.refs.append(_INCOMPLETE)
        value = self._value(kind, at, depth)
        if slot is not None:
            self.refs[slot] = value
        return value

    def _value(self, kind: str, at: int, depth: int) -> Any:
        simple = {"N": None, "F": False, "T": True, ".": Ellipsis}
        if kind in simple:
            return simple[kind]
        if kind == "i":
            return self._int32()
        if kind == "l":
            n = self._int32()
            if abs(n) > MAX_LONG_DIGITS:
                raise PyCodeError(f"integer constant of {abs(n)} digits at offset {at} is too large")
            value = 0
            for i in range(abs(n)):
                digit = struct.unpack("<H", self._take(2))[0]
                if digit >= 1 << 15:
                    raise PyCodeError(f"bad integer digit at offset {at}")
                value |= digit << (15 * i)
            return -value if n < 0 else value
        if kind == "g":
            return struct.unpack("<d", self._take(8))[0]
        if kind == "y":
            return complex(*struct.unpack("<dd", self._take(16)))
        if kind in "fx":
            parts = [self._take(self._byte()) for _ in range(1 if kind == "f" else 2)]
            try:
                nums = [float(p.decode("ascii")) for p in parts]
            except (UnicodeDecodeError, ValueError) as exc:
                raise PyCodeError(f"bad float text at offset {at}") from exc
            return nums[0] if kind == "f" else complex(*nums)
        if kind == "s":
            return bytes(self._take(self._size()))
        if kind in "tuaA":
            raw = self._take(self._size())
            return self._text(raw, at)
        if kind in "zZ":
            return self._text(self._take(self._byte()), at)
        if kind in "([<>":
            n = self._size()
            items = tuple(self.read(depth + 1) for _ in range(n))
            if kind in "<>":
                return self._frozen(items, at)
            return items
        if kind == ")":
            n = self._byte()
            if n > len(self.data) - self.pos:
                raise PyCodeError(f"marshal size {n} at offset {at} exceeds the data left")
            return tuple(self.read(depth + 1) for _ in range(n))
        if kind == "{":
            pairs = []
            while True:
                if self.data[self.pos : self.pos + 1] == b"0":
                    self.pos += 1
                    return tuple(pairs)
                key = self.read(depth + 1)
                pairs.append((key, self.read(depth + 1)))
        if kind == "c":
            return self._code(depth)
        raise PyCodeError(f"unknown marshal type {kind!r} (byte 0x{ord(kind):02x}) at offset {at}")

    def _text(self, raw: bytes, at: int) -> str:
        try:
            return raw.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise PyCodeError(f"bad string at offset {at}") from exc

    def _frozen(self, items: tuple, at: int) -> frozenset:
        try:
            return frozenset(items)
        except TypeError as exc:
            raise PyCodeError(f"unhashable set member at offset {at}") from exc

    def _code(self, depth: int) -> RawCode:
        n_ints = {"py36": 5, "py38": 6, "py311": 5}[self.layout]
        n_fields = {"py36": 9, "py38": 9, "py311": 10}[self.layout]
        ints = tuple(self._int32() for _ in range(n_ints))
        fields = []
        for i in range(n_fields):
            if i == 8:  # firstlineno: a raw int32 after the name fields (8 objects in every layout)
                fields.append(self._int32())
            fields.append(self.read(depth + 1))
        return RawCode(ints, tuple(fields), self.layout)


def read_code_bytes(data: bytes, layout: str) -> Any:
    """The object marshalled in ``data``, reading code objects with ``layout``: ``"py36"``
    (CPython 3.5–3.7: 5 int fields), ``"py38"`` (3.8–3.10: 6) or ``"py311"`` (3.11–3.12: 5,
    then the localsplus fields). All of ``data`` must be consumed."""
    if not isinstance(data, (bytes, bytearray)):
        raise PyCodeError("marshal data must be bytes")
    if len(data) > MAX_INPUT:
        raise PyCodeError(f"marshal data of {len(data)} bytes exceeds the {MAX_INPUT}-byte limit")
    reader = _Reader(bytes(data), layout)
    value = reader.read()
    if reader.pos != len(data):
        raise PyCodeError(f"{len(data) - reader.pos} bytes of trailing marshal data")
    return value
