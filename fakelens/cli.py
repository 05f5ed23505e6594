"""The `fakelens` command line: one entry point, one subcommand module per package.

It lives in its own package because it is the only code allowed to reach both
`training` and `service` (which must not import each other; see the import contract in
pyproject.toml). Each module listed in SUBCOMMAND_MODULES exposes `register(subparsers)`, adding its
subcommands with `set_defaults(run=callable)`; the callable receives the parsed
namespace, turns it into typed arguments/config and does the work. Modules are
imported lazily so `fakelens score` never pays for importing training code.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

# Exit statuses every subcommand shares (README "Exit statuses"); 130 is an interrupt.
EXIT_BAD_COMMAND = 2  # bad input, flags or paths: the message says what to change
EXIT_DISK_FULL = 3  # no space left: free some, rerun the same command

SUBCOMMAND_MODULES = (
    "training.cli",
    "training.evaluate_cli",
    "models.cli",
    "service.serve_cli",
    "service.score_cli",
    "service.evidence_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fakelens", description="Detect AI-generated and manipulated images.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.register(sub)
    return parser


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
