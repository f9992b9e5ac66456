"""``torchkeras-io``: inspect, convert, diff and verify Keras checkpoint files from the shell.

Every command reads files at the format level first (the first bytes say which format), so
``inspect`` and ``diff`` need no model code; ``convert`` and ``verify`` rebuild the model through
the public API (:func:`torchkeras_io.load_model`) where the target needs the architecture. One
module per command (``inspect``, ``convert``, ``diff``, ``verify``) registers its own arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
import warnings
from typing import Optional, Sequence

from torchkeras_io.cli import convert, diff, inspect, verify
from torchkeras_io.cli.common import EXIT_BAD_FILE, EXIT_OK, EXIT_USAGE, UsageError, one_line
from torchkeras_io.errors import TorchKerasIOError, TorchKerasIOWarning

_EPILOG = """\
formats (detected from the file's first bytes, never from its name):
  legacy HDF5 (.h5)          Keras 1/2, tf.keras and Keras 3 model.save("x.h5") / save_weights("x.h5")
  Keras 3 .weights.h5        variables by position (layers/<path>/vars/<i>), no weight names
  Keras 3 .weights.json      the sharded form: an index and its .weights.h5 shards beside it
  Keras 3 .keras             ZIP of config.json, metadata.json, model.weights.h5 (read in memory)
  safetensors                read with safetensors.safe_open (pip install safetensors)
  torch state_dict           torch.save zip files, read with torch.load(weights_only=True, mmap=True)

exit codes (stable, for scripts):
  0  success (diff: no differences; verify: outputs within tolerance)
  1  diff found differences, or verify failed (outputs differ, or Keras could not load the file)
  2  usage error: bad arguments, or a conversion that needs Python (the message says how)
  3  the file is unreadable, invalid, or holds something torchkeras_io cannot build

Messages go to stderr as one line ("torchkeras-io: error: ..."); --debug shows the traceback.
"""

_EXAMPLES = """\
examples:
  torchkeras-io inspect model.h5                     what the file holds (add --json for scripts)
  torchkeras-io convert model.h5 model.keras         legacy HDF5 -> Keras 3, optimizer state included
  torchkeras-io convert model.h5 model.safetensors   the torch state_dict of the rebuilt model
  torchkeras-io diff before.h5 after.h5 --atol 1e-6  which weights differ, and by how much
  torchkeras-io verify model.h5                      same outputs as Keras, layer by layer?
  torchkeras-io COMMAND --help                       what a command does and does not support

"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``torchkeras-io``."""
    p = argparse.ArgumentParser(
        prog="torchkeras-io",
        description=textwrap.fill(
            "Inspect, convert, compare and verify Keras checkpoint files (legacy .h5, "
            ".keras, .weights.h5), safetensors and PyTorch state_dict files, without writing "
            "any Python.",
            96,
        ),  # fmt: skip
        epilog=_EXAMPLES + _EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (inspect, convert, diff, verify):
        command.register(sub, _EPILOG, argparse.RawDescriptionHelpFormatter)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``torchkeras-io`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TorchKerasIOWarning)
            code = args.func(args)
        if not getattr(args, "quiet", False):
            for w in caught:
                if issubclass(w.category, TorchKerasIOWarning):
                    print(f"torchkeras-io: warning: {' '.join(str(w.message).split())}", file=sys.stderr)
        return code
    except BrokenPipeError:  # output piped into `head`: not an error of the file
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except UsageError as exc:
        if args.debug:
            raise
        _error(str(exc))
        return EXIT_USAGE
    except (TorchKerasIOError, OSError) as exc:
        if args.debug:
            raise
        _error(one_line(exc))
        return EXIT_BAD_FILE


def _error(message: str) -> None:
    print(f"torchkeras-io: error: {textwrap.shorten(message, 2000)}", file=sys.stderr)
