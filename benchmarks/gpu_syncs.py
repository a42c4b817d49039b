"""Where a stage's training steps make the CPU wait for the GPU: one ``kegnet fit`` run in this process with
``torch.cuda.set_sync_debug_mode("warn")`` switched on at the first training step, each synchronising call
counted by the innermost lines of this project (and Lightning, torchmetrics) that lead to it.

A synchronising call (a tensor read back as a Python number, ``torch.unique``, a copy to the host) stops the CPU
until the GPU has run everything queued before it, so the next step's kernels cannot be queued ahead; a few per
step are unavoidable (Lightning reads the loss for the progress bar), one per loss term or per generator is not.

Usage: ``python benchmarks/gpu_syncs.py fit --config configs/mnist/generator.yaml --trainer.max_epochs 1 ...``
(the arguments are ``kegnet``'s). Prints one line per place, most frequent first, then ``syncs_per_step=X``.
"""

from __future__ import annotations

import collections
import sys
import traceback
import warnings

import torch
from pytorch_lightning import Callback

from kegnet_pl import cli

COUNTS: collections.Counter[str] = collections.Counter()
STEPS = [0]


def _where() -> str:
    frames = [f for f in traceback.extract_stack()[:-2] if "warnings" not in f.filename]
    ours = [f for f in frames if "/kegnet_pl/" in f.filename or "/benchmarks/" in f.filename]
    inner = frames[-1]
    place = f"{inner.filename.rsplit('site-packages/', 1)[-1]}:{inner.lineno} {inner.line}"
    if ours:
        own = ours[-1]
        place = f"{own.filename.rsplit('/kegnet_pl/', 1)[-1]}:{own.lineno} {own.line}  <- {place}"
    return place


def _show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 (warnings' own hook)
    if "synchronizing" in str(message):
        COUNTS[_where()] += 1
    else:
        print(f"{category.__name__}: {message}", file=sys.stderr)


class SyncDebug(Callback):
    """Switches the warnings on at the first training batch (setup's read-backs are not per step) and counts steps."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        if STEPS[0] == 0:
            torch.cuda.set_sync_debug_mode("warn")
        STEPS[0] += 1

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        torch.cuda.set_sync_debug_mode("default")


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_syncs.py: torch sees no GPU here; run it where one is")
    sys.modules.setdefault("gpu_syncs", sys.modules[__name__])  # the callback's class_path finds this module
    warnings.showwarning = _show
    warnings.simplefilter("always")
    args = [*sys.argv[1:], '--trainer.callbacks+={"class_path": "gpu_syncs.SyncDebug"}']
    args += ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]
    cli.main(args)
    print(f"\nsynchronising calls during {STEPS[0]} training steps (and their validation), by place:")
    for place, count in COUNTS.most_common():
        print(f"{count:6d}  {place}")
    print(f"syncs_per_step={sum(COUNTS.values()) / max(1, STEPS[0]):.2f}")


if __name__ == "__main__":
    main()
