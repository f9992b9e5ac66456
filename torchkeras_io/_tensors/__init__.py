"""The tensor engine: lazy tensor views (:mod:`.lazy`), block data movement between file and
parameter layouts (:mod:`.blockio`), and the numpy/bfloat16 codec (:mod:`.dtypes`).

A leaf package: it imports nothing from torchkeras_io outside itself.
"""

from torchkeras_io._tensors.blockio import BLOCK_BYTES, BlockPlan, Transfer, blocks
from torchkeras_io._tensors.dtypes import BLOCK_DTYPES, bits_equal, from_numpy, to_numpy, torch_dtype_of
from torchkeras_io._tensors.lazy import Lazy, Strided

__all__ = [
    "BLOCK_BYTES",
    "BLOCK_DTYPES",
    "BlockPlan",
    "Lazy",
    "Strided",
    "Transfer",
    "bits_equal",
    "blocks",
    "from_numpy",
    "to_numpy",
    "torch_dtype_of",
]
