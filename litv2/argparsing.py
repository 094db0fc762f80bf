"""The argument parser every command line of the project uses (``search``, ``space``,
``experiments``, ``litv2.bench``): strict, and one line per error.

Standard library only, so a command parses its arguments before importing torch.
"""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped


def interrupted(prog: str) -> int:
    """Ctrl-C in a command: one line instead of a traceback, and exit 130. What it was
    writing stays unwritten: the project writes files whole, under a temporary name."""
    print(f"{prog}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


class StrictParser(argparse.ArgumentParser):
    """argparse without prefix matching (``--epoch`` is not ``--epochs``), whose options take
    values that start with a dash (``--budget -1gpu-h`` reaches the check that names it), and
    whose errors are one line. Give it as ``parser_class`` to ``add_subparsers`` too."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(glue_dash_values(self, sys.argv[1:] if args is None else list(args)),
                                        namespace)

    def error(self, message: str) -> NoReturn:
        """One line, exit status 2 (argparse's own adds the usage above it)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def glue_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``--opt -value`` -> ``--opt=-value`` for options of ``parser`` (and its sub-commands) that
    take one value, when ``-value`` is not itself an option: argparse would otherwise read it as
    a missing value and never say which one."""
    flags = _value_options(parser)
    known = _all_options(parser)
    out: list[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if (token in flags and following is not None and following.startswith("-") and following != "-"
                and following.split("=", 1)[0] not in known):
            out.append(f"{token}={following}")
            index += 2
            continue
        out.append(token)
        index += 1
    return out


def _sub_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _sub_parsers(sub)
    return found


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for p in _sub_parsers(parser) for a in p._actions if a.option_strings and a.nargs is None
            and not isinstance(a, (argparse._StoreConstAction, argparse._HelpAction)) for flag in a.option_strings}


def _all_options(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for p in _sub_parsers(parser) for a in p._actions for flag in a.option_strings}
