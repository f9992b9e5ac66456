"""``python -m torchkeras_io``: the ``torchkeras-io`` command line."""

import sys

from torchkeras_io.cli import main

if __name__ == "__main__":
    sys.exit(main())
