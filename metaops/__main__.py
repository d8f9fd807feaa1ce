"""``python -m metaops``: the demo and the oracle commands (see :mod:`metaops._cli`)."""

import sys

from metaops._cli import main

if __name__ == "__main__":
    sys.exit(main())
