"""The ``prdit`` command: one subcommand per task, each a thin door into the library.

One module per command group; each adds its parser and imports library code only inside its run function, so
that ``prdit --help`` loads neither torch nor scipy.
"""

from __future__ import annotations

import argparse
import sys

from prdit import __version__
from prdit.cli import config, convert, data, demo, evaluate, export, plan, preview, report, restore, sample, train
from prdit.cli.common import run_command, set_openmp_waiting


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prdit",
        description="PRDiT: pixel-level residual diffusion transformer for 3D CT volume generation.",
    )
    parser.add_argument("--version", action="version", version=f"prdit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (data, demo, train, plan, sample, restore, export, convert, evaluate, report, preview, config):
        group.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    set_openmp_waiting()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
