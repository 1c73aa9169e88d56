"""`ops/bench`'s entry point; the harness is the `benchkit` package beside it (its docstring
defines every figure)."""

import sys

from benchkit.main import main

if __name__ == "__main__":
    sys.exit(main())
