"""`bert-jax --print-completion SHELL`: a tab-completion script for bash, zsh or tcsh, generated
by shtab from the argparse parser, so it always matches the installed commands and flags. shtab is
an optional dependency (`pip install 'bert_jax[completion]'`), imported only when asked for."""

from __future__ import annotations

import argparse

SHELLS = ("bash", "zsh", "tcsh")  # shtab.SUPPORTED_SHELLS, listed here so --help needs no import


class PrintCompletion(argparse.Action):
    """Prints the completion script for the chosen shell and exits 0; a one-line usage error
    (exit 2) naming the missing package when shtab is not installed."""

    def __init__(self, option_strings, dest, help=None):
        super().__init__(option_strings, dest, choices=SHELLS, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            import shtab
        except ImportError:
            parser.error(f"{option_string} needs shtab: pip install 'bert_jax[completion]' (or shtab)")
        complete_paths(parser, shtab.FILE)
        print(shtab.complete(parser, shell=values), end="")
        parser.exit()


def complete_paths(parser: argparse.ArgumentParser, files: dict) -> None:
    """Marks every flag of `parser` and its subcommands that takes a free value (no choices, not a
    number) for file-name completion (`files`: shtab.FILE); the others complete their choices."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                complete_paths(command, files)
        elif action.nargs != 0 and action.choices is None and action.type not in (int, float):
            action.complete = files
