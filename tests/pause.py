"""Callbacks for tests that stop a training process at a known step: ``PauseAtStep`` creates ``signal_file`` and
waits, so that the test can kill it there whatever the machine's speed; ``StopAtStep`` raises there."""

import time
from pathlib import Path

from pytorch_lightning import Callback


class PauseAtStep(Callback):
    def __init__(self, step: int, signal_file: str, seconds: float = 600.0) -> None:
        self.step = step
        self.signal_file = signal_file
        self.seconds = seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            Path(self.signal_file).touch()
            time.sleep(self.seconds)


class StopAtStep(Callback):
    """Raises at the start of global step ``step``: the run ends mid-epoch with the checkpoints written before it,
    as a crash or a killed process would leave them."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"stopped at step {self.step}")
