"""Errors that kegnet_pl raises for a user's mistake.

Every error names the thing that is wrong (a file, a value) and how to fix it. The ``kegnet``
command prints them as one line and exits non-zero instead of showing a traceback.
"""

from __future__ import annotations

import argparse


class KegnetError(Exception):
    """Base class of the errors caused by user input (files, configs, arguments)."""


class CheckpointError(KegnetError):
    """A weights or checkpoint file is missing, unreadable, untrusted or does not fit the network."""


class DataNotFoundError(KegnetError, FileNotFoundError):
    """A data set is not where the configuration says it is."""


class ConfigError(KegnetError, ValueError):
    """A configuration value is out of range or inconsistent with another one."""


class NumericalError(KegnetError, FloatingPointError):
    """A loss became NaN or infinite; training stops and the last good checkpoint is kept."""


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
