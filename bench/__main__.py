"""``python -m bench`` (from a source checkout) or ``python -m fastloss._bench``."""

import sys

from .runner import main

if __name__ == "__main__":
    sys.exit(main())
