"""Optional progress bars (tqdm) for reads and writes, and the compression options of a write."""

from __future__ import annotations

import sys
from typing import Optional

from torchkeras_io.errors import TorchKerasIOError

#: ``progress=None`` shows a bar from this many bytes of tensor data on (when tqdm is installed
#: and stderr is a terminal)
PROGRESS_THRESHOLD = 1 << 30

COMPRESSIONS = (None, "gzip", "lzf")


def check_compression(compression: Optional[str], compression_opts) -> Optional[int]:
    """Validate ``compression``/``compression_opts``; the gzip level to use (None: no gzip)."""
    if compression not in COMPRESSIONS:
        raise TorchKerasIOError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    if compression == "gzip":
        level = 4 if compression_opts is None else compression_opts  # h5py's default level
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
            raise TorchKerasIOError(f"gzip compression_opts must be an int from 0 to 9, got {compression_opts!r}")
        return level
    if compression_opts is not None:
        raise TorchKerasIOError(f"compression_opts is only for gzip, got {compression_opts!r} with {compression!r}")
    return None


def tensor_bytes(records, top_weights=()) -> int:
    """The bytes of tensor data in :class:`LayerWeights` records (what a progress bar counts)."""
    lazies = [x for r in records for x in (*r.weights, *r.extras.values())] + list(top_weights)
    return sum(x.numel() * x.dtype.itemsize for x in lazies)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(progress: Optional[bool], total: int, desc: str):
    """A tqdm bar counting ``total`` bytes, or a stand-in that does nothing.

    ``progress=True`` always shows one (and needs tqdm), ``False`` never, ``None`` from
    :data:`PROGRESS_THRESHOLD` bytes on when tqdm is importable and stderr is a terminal.
    """
    if progress is None:
        if total < PROGRESS_THRESHOLD or not _isatty(sys.stderr):
            return _NoBar()
        try:
            from tqdm import tqdm
        except ImportError:
            return _NoBar()
    elif progress:
        try:
            from tqdm import tqdm
        except ImportError as exc:
            raise TorchKerasIOError(
                "progress=True needs tqdm: pip install 'torchkeras-io[progress]' (or tqdm)"
            ) from exc
    else:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
