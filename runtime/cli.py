"""What the command lines share: each names itself as it is run and shows every default in --help."""
from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and "(default: X)" after every option's help that has one:
    not for required options, switches (off unless given) and options whose help says what None means."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parser(module: str, description: str) -> argparse.ArgumentParser:
    """module: the dotted name, e.g. "model.train", shown as `python -m model.train`."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=description, formatter_class=HelpFormatter)
