"""`python -m kubenas.oneshot --spec SPEC.json --artifacts DIR [--device cpu|cuda]`."""

import sys

from kubenas.oneshot.worker import main

if __name__ == "__main__":
    sys.exit(main())
