"""`ops/load`'s entry point; the suite is `reliakit.load_*` beside it (`load_verdict` defines
what counts as a bad answer)."""

import sys

from reliakit.load_main import main

if __name__ == "__main__":
    sys.exit(main())
