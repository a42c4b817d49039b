"""Run the generator and student stages as a real two-rank DDP job and check what it wrote.

Two ``kegnet fit`` processes are started the way a cluster starts one process per node (``--trainer.num_nodes 2``,
``NODE_RANK`` 0 and 1, one ``MASTER_ADDR:MASTER_PORT``), both on this host: a multi-node launch rehearsed on one
machine. With ``--accelerator gpu`` both ranks train on CUDA tensors on the first visible GPU; NCCL refuses two ranks
on one GPU, so the process group is gloo, which reduces CUDA tensors too (on several GPUs use
``configs/trainer/ddp.yaml``: NCCL, one rank per GPU). It checks, and exits 1 naming the first that fails:

1. generators: both ranks finish, the checkpoint folder holds ``last.ckpt`` and the last epoch's checkpoint, written
   once (rank 0), with ``global_step`` = epochs x batches_per_epoch / 2 (the batches are shared out over the ranks);
2. resume: the same command with ``--ckpt_path last`` and one more epoch goes on from that step;
3. student: student 1 distilled from those generators (a pool per rank) for one epoch, its checkpoint written once,
   its monitored validation metric (``val/kl``, reduced across the ranks) recorded.

Usage: ``python scripts/ddp_two_ranks.py --accelerator gpu --out runs/ddp_two_ranks`` (``--accelerator cpu`` to
try it without a GPU). The folder must not exist yet.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STRATEGY = json.dumps(
    {"class_path": "pytorch_lightning.strategies.DDPStrategy", "init_args": {"process_group_backend": "gloo"}}
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_ranks(args: list[str], accelerator: str, log: Path, timeout: float) -> float:
    """Start ``kegnet fit ARGS`` as node 0 and node 1 of a 2-node job; wait for both; return the wall time."""
    common = [
        sys.executable, "-c", "from kegnet_pl.cli import main; main()", "fit", *args,
        "--trainer.accelerator", accelerator, "--trainer.devices", "1", "--trainer.num_nodes", "2",
        "--trainer.strategy", STRATEGY, "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    started = time.perf_counter()
    processes = []
    for rank in (0, 1):
        out = open(f"{log}.rank{rank}.log", "w")  # noqa: SIM115 (closed below)
        processes.append((subprocess.Popen(common, env=dict(env, NODE_RANK=str(rank)), stdout=out, stderr=out), out))
    failed = []
    for rank, (process, out) in enumerate(processes):
        try:
            code = process.wait(timeout=max(1.0, timeout - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            process.kill()
            code = "timed out"
        out.close()
        if code:
            failed.append(f"rank {rank}: exit {code}, see {log}.rank{rank}.log")
    if failed:
        for rank in (0, 1):
            print(f"--- {log}.rank{rank}.log (last lines)")
            print("".join(open(f"{log}.rank{rank}.log").readlines()[-25:]))
        raise SystemExit("FAILED: " + "; ".join(failed))
    return time.perf_counter() - started


def check(condition: bool, what: str) -> None:
    print(("ok      " if condition else "FAILED  ") + what)
    if not condition:
        raise SystemExit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accelerator", default="gpu", choices=["gpu", "cpu"], help="where both ranks train")
    parser.add_argument("--out", default="runs/ddp_two_ranks", help="a new folder for the runs and their logs")
    parser.add_argument("--batches", type=int, default=40, help="batches per epoch over both ranks (even)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds allowed for each stage")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        parser.error(f"--out {out} exists; give a new folder (nothing in it is overwritten)")
    if args.batches % 2:
        parser.error(f"--batches {args.batches}: give an even number, shared out over the 2 ranks")
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu: torch sees no GPU here; use --accelerator cpu")
    out.mkdir(parents=True)
    where = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU"
    print(f"two ranks (2 nodes x 1 device, gloo) on {where}, torch {torch.__version__}")
    steps_per_epoch = args.batches // 2

    generator_dir = out / "generator"
    generator = [
        "--config", str(ROOT / "configs/mnist_subset/generator.yaml"),
        "--trainer.default_root_dir", str(generator_dir), "--trainer.max_epochs", "2",
        "--data.init_args.batches_per_epoch", str(args.batches),
        "--model.init_args.teacher", str(ROOT / "checkpoints/mnist_subset_lenet5.ckpt"),
    ]  # fmt: skip
    seconds = two_ranks(generator, args.accelerator, out / "generator", args.timeout)
    checkpoints = generator_dir / "checkpoints"
    names = sorted(path.name for path in checkpoints.glob("*.ckpt"))
    expected = [f"epoch=1-step={2 * steps_per_epoch}.ckpt", "last.ckpt"]  # the config keeps the latest epoch's
    check(names == expected, f"generators: 2 epochs in {seconds:.1f} s, checkpoints {names}")
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    check(state["global_step"] == 2 * steps_per_epoch, f"generators: global_step {state['global_step']}")

    seconds = two_ranks(
        [*generator, "--trainer.max_epochs", "3", "--ckpt_path", "last"], args.accelerator, out / "resume", args.timeout
    )
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    restored = "Restored all states from the checkpoint" in (out / "resume.rank0.log").read_text()
    check(
        restored and state["global_step"] == 3 * steps_per_epoch,
        f"resume: restored, one more epoch in {seconds:.1f} s, global_step {state['global_step']}",
    )

    student_dir = out / "student"
    student = [
        "--config", str(ROOT / "configs/mnist_subset/student.yaml"),
        "--trainer.default_root_dir", str(student_dir), "--trainer.max_epochs", "1",
        "--model.init_args.generators", str(checkpoints / "last.ckpt"), "--model.init_args.pool_size", "256",
        "--data.init_args.batches_per_epoch", str(args.batches),
    ]  # fmt: skip
    seconds = two_ranks(student, args.accelerator, out / "student", args.timeout)
    names = sorted(path.name for path in (student_dir / "checkpoints").glob("*.ckpt"))
    check(len(names) == 2 and "last.ckpt" in names, f"student: 1 epoch in {seconds:.1f} s, checkpoints {names}")
    state = torch.load(student_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    scores = [  # the checkpoint callback's record of the monitored metric (the config's val/kl)
        f"{value['monitor']} = {float(value['best_model_score']):.4f}"
        for value in state["callbacks"].values()
        if isinstance(value, dict) and value.get("best_model_score") is not None
    ]
    check(state["global_step"] == steps_per_epoch, f"student: global_step {state['global_step']}")
    check(bool(scores), f"student: the monitored validation metric was logged: {', '.join(scores)}")
    print("ddp_two_ranks: all checks passed")


if __name__ == "__main__":
    main()
