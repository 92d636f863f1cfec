"""``python -m cpnn``: the same as the ``cpnn`` command."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
