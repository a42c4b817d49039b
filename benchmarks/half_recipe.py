"""Which parts of DFAD's recipe make a student trained from scratch (LeNet-5-half) learn inside KegNet's batches.

One stage per call, 750 student steps of 256 on the shipped 99.31% teacher (checkpoints/mnist_lenet5.ckpt), no
generators (the pipeline's ``no-generators`` batches: U(-1, 1) noise, pen strokes and an adversary, at the shares
given), scored on the 10,000 real MNIST test images (``make data``); nothing but the teacher and noise trains it.
Prints one JSON line. Examples (each on one CPU thread; the figures are in benchmarks/results/half_recipe_cpu.txt):

    python benchmarks/half_recipe.py --loss l1 --optimizer sgd --lr 0.01 --weight_decay 1e-4   # DFAD's recipe
    python benchmarks/half_recipe.py --loss kl --optimizer adam --lr 0.001 --schedule cosine    # the pipeline's
    python benchmarks/half_recipe.py --dfad                                                      # DFAD itself
"""

from __future__ import annotations

import argparse
import json
import time

import pytorch_lightning as pl
import torch

from kegnet_pl.data import NoiseDataModule
from kegnet_pl.data.sources import DFADGenerator, Mixture, Strokes, UniformNoise
from kegnet_pl.data.vision import MNISTDataModule
from kegnet_pl.modules import StudentModule
from kegnet_pl.modules.dfad import DFADModule

PAPER = {"background": -0.4242, "ink": 2.8215}  # MNIST's blank paper and full ink after normalisation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="checkpoints/mnist_lenet5.ckpt")
    parser.add_argument("--student", default="lenet5-half")
    parser.add_argument("--dfad", action="store_true", help="DFADModule itself: 150 rounds of 5 student steps")
    parser.add_argument("--adversary", type=float, default=0.25, help="the adversary's share of every batch")
    parser.add_argument("--strokes", type=float, default=0.25, help="pen strokes' share; U(-1, 1) takes the rest")
    parser.add_argument("--width", type=int, default=16, help="channels of the adversary's last block")
    parser.add_argument("--loss", choices=["kl", "l1"], default="l1")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="sgd")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    parser.add_argument("--schedule", choices=["constant", "cosine"], default="constant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed)
    steps = 250  # per epoch, 3 epochs
    if args.dfad:
        model = DFADModule(teacher=args.teacher, student=args.student, seed=args.seed)
        steps = 50  # DFAD's rounds hold 5 student steps each
    else:
        noise = 1.0 - args.adversary - args.strokes
        source = Mixture(
            [UniformNoise(), Strokes(**PAPER), DFADGenerator(width=args.width)], [noise, args.strokes, args.adversary]
        )
        model = StudentModule(
            teacher=args.teacher,
            student=args.student,
            source=source,
            pool_size=None,
            adversary_fraction=args.adversary,
            adversary_width=args.width,
            loss=args.loss,
            optimizer=args.optimizer,
            lr=args.lr,
            weight_decay=args.weight_decay,
            lr_schedule=args.schedule,
            strokes=PAPER,
            seed=args.seed,
        )
    data = NoiseDataModule(
        batch_size=256,
        batches_per_epoch=steps,
        seed=args.seed,
        eval_data=MNISTDataModule(root="data", val_size=5000, batch_size=1000),
    )
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    start = time.perf_counter()
    trainer.fit(model, data)
    accuracy = trainer.test(model, data, verbose=False)[0]["test/acc"]
    settings = {key: value for key, value in vars(args).items() if key not in ("teacher", "threads")}
    print(json.dumps({**settings, "test_acc": round(100 * accuracy, 2), "seconds": round(time.perf_counter() - start)}))


if __name__ == "__main__":
    main()
