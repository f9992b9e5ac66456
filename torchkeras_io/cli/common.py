"""What every command shares: exit codes, the usage error, and how numbers and errors are printed."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from torchkeras_io.errors import TorchKerasIOError

EXIT_OK, EXIT_DIFFERENT, EXIT_USAGE, EXIT_BAD_FILE = 0, 1, 2, 3


class UsageError(Exception):
    """A request the tool cannot carry out as asked (exit 2), with what to do instead."""


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def print_table(table: list) -> None:
    """Rows of strings in left-aligned columns, the first row being the header."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def dumps(obj) -> str:
    """Strict JSON: NaN and infinite differences become the strings "nan" and "inf"."""

    def clean(x):
        if isinstance(x, float) and not np.isfinite(x):
            return str(x)
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(obj), indent=2, allow_nan=False)


def one_line(exc: BaseException) -> str:
    """An error as one line of text; an ``OSError`` as its file name and reason."""
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and not isinstance(exc, TorchKerasIOError):
        where = f"'{exc.filename}': " if exc.filename else ""
        text = f"{where}{exc.strerror or text}"
    return text
