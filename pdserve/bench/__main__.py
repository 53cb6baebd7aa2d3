"""``python -m pdserve.bench``: the ``pdserve bench`` command on its own."""

import sys

from pdserve.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
