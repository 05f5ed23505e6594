"""`python -m training --data DATA --out RUN ...` is `fakelens train --data DATA --out RUN ...`."""

import sys

from models.commands import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
