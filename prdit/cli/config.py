"""``prdit config``: validate a config and print it resolved."""

from __future__ import annotations

import argparse

from prdit.cli.common import add_config_arguments


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="validate a config and print it resolved (defaults + overrides)",
        description="Load a YAML config, apply section.key=value overrides, validate every key and print the result.",
    )
    add_config_arguments(parser)
    parser.set_defaults(func=_run_config)


def _run_config(args: argparse.Namespace) -> None:
    from prdit.config import load_config

    print(load_config(args.config, args.overrides).to_yaml(), end="")
