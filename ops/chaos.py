"""`ops/chaos`'s entry point; the suite is `reliakit.chaos_*` beside it (`chaos_main` says what
it does, `chaos_checks` what it checks)."""

import sys
from pathlib import Path

# The fake service managers live with the tests (tests/actors/fake_services.py).
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from reliakit.chaos_main import main

if __name__ == "__main__":
    sys.exit(main())
