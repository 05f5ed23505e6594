"""`python -m fakelens ...` is the `fakelens` command."""

import sys

from fakelens.cli import main

if __name__ == "__main__":
    sys.exit(main())
