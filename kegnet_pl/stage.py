"""``kegnet-pipeline``'s stages without a start-up each: a trained stage's fit and test in one process, and a
process that runs stage after stage.

    python -m kegnet_pl.stage fit --config <stage>/config.yaml [ARGS] [--ckpt_path <stage>/checkpoints/last.ckpt]

runs ``kegnet fit`` with these arguments, then ``kegnet test`` with the same ones and ``--ckpt_path last`` (the
``last.ckpt`` that fit ended with); ``python -m kegnet_pl.stage test ARGS`` is ``kegnet test ARGS``. The test is the
ordinary ``kegnet test``: it seeds everything again and rebuilds the model from the checkpoint, so its metrics are
those of a ``kegnet test`` process of its own.

``python -m kegnet_pl.stage --worker`` imports Python, torch and Lightning once (several seconds of CPU on a small
machine) and then runs one stage per line of its standard input (``{"args": [...], "log": path, "threads": n}``:
the arguments above, the file its output is appended to, and the torch threads to run it on, ``null`` for as they
are), answering each with a line ``{"exit": status}``. Each stage runs as
its own command would: the command line and environment variables are those of ``python -m kegnet_pl.stage ARGS``
while it runs (Lightning's DDP launcher starts the other ranks with that command) and are put back afterwards. A
worker in which a stage left a distributed process group exits after it. On Linux a worker is sent SIGTERM when the
process that started it dies (even by SIGKILL), so a stage never runs on for minutes with no one to read its result:
Lightning stops it at the next batch, and the worker exits.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback
from collections.abc import Sequence

import torch


def without_ckpt_path(args: Sequence[str]) -> list[str]:
    """``args`` without their ``--ckpt_path`` (``--ckpt_path X`` or ``--ckpt_path=X``)."""
    words, skip = [], False
    for word in args:
        if skip:
            skip = False
        elif word == "--ckpt_path":
            skip = True
        elif not word.startswith("--ckpt_path="):
            words.append(word)
    return words


def arguments_to_test(fit_args: Sequence[str]) -> list[str]:
    """``kegnet test`` arguments for the model that ``kegnet fit fit_args`` trained: the same arguments, the fit's
    ``--ckpt_path`` (a run to resume) replaced by ``--ckpt_path last``."""
    return ["test", *without_ckpt_path(fit_args), "--ckpt_path", "last"]


def run(words: Sequence[str]) -> None:
    """``fit ARGS``: fit, then test the ``last.ckpt`` the fit ended with (a failed or interrupted fit exits before
    any test); anything else: ``kegnet`` with these arguments."""
    from kegnet_pl.cli import main as kegnet

    words = list(words)
    kegnet(words)  # a user's mistake exits 2 here
    if words[:1] == ["fit"]:
        kegnet(arguments_to_test(words[1:]))


def run_logged(words: list[str], log: str, threads: int | None = None) -> int:
    """:func:`run` with its output appended to ``log``, the command line and environment of its own process, on
    ``threads`` torch threads (``None``: as they are); its exit status."""
    argv, environ, before = sys.argv, dict(os.environ), torch.get_num_threads()
    sys.argv = [sys.argv[0], *words]
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "a") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            run(words)
            status = 0
        except SystemExit as done:
            status = done.code if isinstance(done.code, int) else int(done.code is not None)
        except Exception:
            traceback.print_exc()
            status = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sys.argv = argv
            os.environ.clear()
            os.environ.update(environ)
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
    return status


def terminate_with_parent() -> bool:
    """Ask Linux to send this process SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``); whether it could.
    Elsewhere nothing is done: a worker whose pipeline was killed then finishes its stage before it notices."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the process's own symbols, libc's prctl among them
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def worker() -> None:
    """Run stage after stage, one per line of standard input, until it closes (see the module docstring)."""
    terminate_with_parent()
    replies = os.dup(1)  # the answers alone (unbuffered): anything else printed goes to stderr
    os.dup2(2, 1)
    import kegnet_pl.cli  # noqa: F401  (the start-up, once, while the pipeline runs other stages)

    for line in sys.stdin:
        request = json.loads(line)
        status = run_logged(request["args"], request["log"], request.get("threads"))
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        try:
            os.write(replies, (json.dumps({"exit": status, "retired": distributed}) + "\n").encode())
        except BrokenPipeError:  # the pipeline is gone: no one to answer, nothing left to run
            return
        if distributed:  # a process group cannot be set up again in this process
            return


def main(args: list[str] | None = None) -> None:
    words = list(sys.argv[1:] if args is None else args)
    if words == ["--worker"]:
        worker()
        return
    if not words or words[0] not in ("fit", "test"):
        print(
            "kegnet_pl.stage: error: the first argument must be fit or test (python -m kegnet_pl.stage fit ARGS runs "
            "kegnet fit ARGS, then kegnet test ARGS --ckpt_path last), or --worker alone",
            file=sys.stderr,
        )
        sys.exit(2)
    run(words)


if __name__ == "__main__":  # pragma: no cover
    main()
