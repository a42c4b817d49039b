"""One trained ``kegnet-pipeline`` stage in one process: ``kegnet fit``, then ``kegnet test`` of what it trained.

    python -m kegnet_pl.stage fit --config <stage>/config.yaml [ARGS] [--ckpt_path <stage>/checkpoints/last.ckpt]

runs ``kegnet fit`` with these arguments, then ``kegnet test`` with the same ones and ``--ckpt_path last`` (the
``last.ckpt`` that fit ended with), as two processes did before, but with one start-up of Python, torch and Lightning
(several seconds on a small CPU) instead of two. The test is the ordinary ``kegnet test``: it seeds everything again
and rebuilds the model from the checkpoint, so its metrics are those of a ``kegnet test`` process of its own.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from kegnet_pl.cli import main as kegnet


def arguments_to_test(fit_args: Sequence[str]) -> list[str]:
    """``kegnet test`` arguments for the model that ``kegnet fit fit_args`` trained: the same arguments, the fit's
    ``--ckpt_path`` (a run to resume) replaced by ``--ckpt_path last``."""
    words, skip = [], False
    for word in fit_args:
        if skip:
            skip = False
        elif word == "--ckpt_path":
            skip = True
        elif not word.startswith("--ckpt_path="):
            words.append(word)
    return ["test", *words, "--ckpt_path", "last"]


def main(args: list[str] | None = None) -> None:
    """Fit, then test the ``last.ckpt`` the fit ended with; a failed or interrupted fit exits before any test."""
    words = list(sys.argv[1:] if args is None else args)
    if words[:1] != ["fit"]:
        print(
            "kegnet_pl.stage: error: the first argument must be fit (python -m kegnet_pl.stage fit ARGS runs kegnet "
            "fit ARGS, then kegnet test ARGS --ckpt_path last)",
            file=sys.stderr,
        )
        sys.exit(2)
    kegnet(words)  # a user's mistake exits 2 here, before any test
    kegnet(arguments_to_test(words[1:]))


if __name__ == "__main__":  # pragma: no cover
    main()
