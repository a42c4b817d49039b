"""Errors that kegnet_pl raises for a user's mistake.

Every error names the thing that is wrong (a file, a value) and how to fix it. The ``kegnet``
command prints them as one line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from pathlib import Path

#: where a message that names ``kegnet`` options goes on with the same settings as Python arguments
FROM_PYTHON = "; from Python, "


class KegnetError(Exception):
    """Base class of the errors caused by user input (files, configs, arguments)."""


class CheckpointError(KegnetError):
    """A weights or checkpoint file is missing, unreadable, untrusted or does not fit the network."""


class DataNotFoundError(KegnetError, FileNotFoundError):
    """A data set is not where the configuration says it is: ``problem`` says what is missing where, ``fixes`` what
    to do, naming the DataModule's options as ``{options}root``: ``--data.init_args.root``, unless the DataModule
    sits inside another one (:meth:`within`), then the same as the DataModule's arguments in Python (``root``)."""

    def __init__(self, problem: str, fixes: Sequence[str] = (), options: str = "--data.init_args.") -> None:
        self.problem, self.fixes = problem, tuple(fixes)
        todo = [fix.replace("{options}", options) for fix in self.fixes]
        if len(todo) > 1:
            todo = [", ".join(todo[:-1]) + ", or " + todo[-1]]
        names = dict.fromkeys(re.findall(r"\{options\}(\w+)", " ".join(self.fixes)))
        arguments = f"argument {''.join(names)}" if len(names) == 1 else f"arguments {' and '.join(names)}"
        python = f"{FROM_PYTHON}the DataModule's {arguments}" if names else ""
        super().__init__(f"{problem}. {todo[0][:1].upper()}{todo[0][1:]}{python}." if todo else problem)

    def within(self, options: str, *fixes: str) -> DataNotFoundError:
        """The same error for a DataModule whose options are ``{options}root`` etc., with ``fixes`` added."""
        return DataNotFoundError(self.problem, (*self.fixes, *fixes), options)


class ConfigError(KegnetError, ValueError):
    """A configuration value is out of range or inconsistent with another one."""


class NumericalError(KegnetError, FloatingPointError):
    """A loss became NaN or infinite; training stops and the last good checkpoint is kept."""


def run_folder_hint(path: str | os.PathLike) -> str:
    """For a relative path that was not found: where it was looked for (the shipped configs name their files
    relative to the repository's root, and a command run elsewhere does not find them)."""
    if Path(path).is_absolute():
        return ""
    where = f"looked for in {os.getcwd()!r}, the folder the command runs in"
    return f" ({where}; the shipped configs run from the repository root)"


def parser_message(err: argparse.ArgumentError) -> str:
    """A command-line parser's error as one line, without the noise of the union of class types it tried."""
    noise = (
        "Does not validate against any of the Union subtypes",
        "Subtypes:",
        "Errors:",
        "Given value",
        "Expected a <class 'NoneType'>",
    )
    lines = [line.strip().removeprefix("- ") for line in str(err).splitlines()]
    return " ".join(line for line in lines if line and not line.startswith(noise))


class OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block), as every error of kegnet_pl's commands."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")
