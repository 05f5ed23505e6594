"""The `fakelens` command line: one entry point, subcommands contributed by each package.

Each package declares its subcommand modules as entry points in pyproject.toml
(group `fakelens.commands`, value `package.module:register`), and this dispatcher loads them
by that name only: no package names another, so `training` and `service` never import each
other and `models` imports neither (the import contract in pyproject.toml, checked by
`make test`). `register(subparsers)` adds the subcommands with `set_defaults(run=callable)`;
the callable turns the parsed namespace into typed config and does the work. Modules are
loaded lazily per command run, so `fakelens score` does not pay for importing training code.

    fakelens --help          # or: python -m models.commands --help
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

GROUP = "fakelens.commands"
# Exit statuses every subcommand shares (README "Exit statuses"); 130 is an interrupt.
EXIT_BAD_COMMAND = 2  # bad input, flags or paths: the message says what to change
EXIT_DISK_FULL = 3  # no space left: free some, rerun the same command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fakelens", description="Detect AI-generated and manipulated images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for _name, target in sorted(command_modules().items()):
        module, _, attr = target.partition(":")
        getattr(importlib.import_module(module), attr)(sub)
    return parser


def command_modules() -> dict[str, str]:
    """name -> "module:register". A source checkout reads its own pyproject.toml (current even
    when the installed metadata is stale, and works uninstalled, e.g. with only PYTHONPATH set);
    an installed wheel reads its entry points."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        table = tomllib.loads(pyproject.read_text()).get("project", {}).get("entry-points", {}).get(GROUP)
        if table:
            return dict(table)
    found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    if not found:
        raise SystemExit(f"fakelens: no subcommands are registered (entry-point group {GROUP!r}); "
                         "install the package: pip install -e .")
    return found


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads spin while waiting by default; on a shared or CPU-limited host (a busy
    # node, a k8s pod) that made a 2-thread torch process ~30x slower here (see
    # docs/performance-training.md). Passive waiting costs little when the cores are free.
    # Set before torch is imported (subcommands import it lazily); the user's value wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"fakelens {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_COMMAND
    except OSError as e:
        if not is_disk_full(e):
            raise
        where = f" writing {e.filename}" if getattr(e, "filename", None) else ""
        print(f"fakelens {args.command}: error: no space left on the device{where}; free some space, then rerun "
              "the same command (an interrupted `fakelens score` resumes where it stopped)", file=sys.stderr)
        return EXIT_DISK_FULL


def is_disk_full(e: OSError) -> bool:
    # pyarrow's IO errors carry no errno, only the C library's message
    return e.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e)


if __name__ == "__main__":
    sys.exit(main())
