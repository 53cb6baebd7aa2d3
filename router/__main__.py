"""``python -m router``: runs one router process (same as ``pdserve router``)."""

import sys

from pdserve.cli import main

if __name__ == "__main__":
    sys.exit(main(["router", *sys.argv[1:]]))
