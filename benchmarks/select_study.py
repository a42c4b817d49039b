"""Can a data-free score tell which of a run's students is best on real data?

For every (seed, student) of one or more pipeline run folders, each method's trained student (``last.ckpt``) gets
data-free scores computed from the teacher and artificial inputs only; the real test accuracy that the stage
recorded (``result.json``) is read afterwards, only to say how well each score chose. Printed per score: how often
it picks the best candidate, the mean accuracy lost against the best (regret) and the mean Spearman rank correlation
with test accuracy; then the same for always shipping one method. Folders given together with ``--group a,b`` share a
teacher and seeds (their candidates compete).

Scores (higher is better):

* ``chosen``: the library's score (:mod:`kegnet_pl.selection`, what ``kegnet-pipeline`` chooses by): agreement
  with the teacher on the probes (U(-1, 1), N(0, 1), pen strokes and another hand's, the seed's generators; 2,048
  each, images moved) that the teacher calls with probability >= 0.95, ties broken by the KL divergence there. The
  figures in ``results/select_study_*.txt`` are of the score before moved probes (no other hand, nothing moved);
  ``select_probes.py`` measures both;
* ``chosen_kl``: minus the KL divergence on those probes alone;
* ``mix``: agreement on all the probes, sure or not;
* ``attack``: minus the teacher-student KL after 20 steps of signed-gradient ascent on that KL from 512 of the probes
  (step 0.05, clamped to blank paper .. full ink);
* ``inverted`` / ``inverted_kl``: agreement / minus KL on 2,048 inputs optimised to make the teacher call a random
  class (150 Adam steps of cross-entropy plus total variation, from blank paper and a little noise);
* ``own:SOURCE``: agreement on one source's probes.

    python benchmarks/select_study.py --group runs/pipeline/foreign \
        --group runs/pipeline/mnist_strokes,runs/pipeline/mnist_adversary
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from kegnet_pl import selection
from kegnet_pl.data.noise import derive_seed

BACKGROUND, INK = -0.4242, 2.8215  # MNIST's blank paper and full ink after its normalisation


def inverted(teacher, shape, classes, seed: int, n: int = 2048, steps: int = 150, device="cpu") -> torch.Tensor:
    generator = torch.Generator().manual_seed(derive_seed("inverted", seed))  # drawn on the CPU, optimised on device
    x = (BACKGROUND + 0.3 * torch.randn(n, *shape, generator=generator)).to(device).requires_grad_(True)
    target = torch.randint(classes, (n,), generator=generator).to(device)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(steps):
        tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
        loss = F.cross_entropy(teacher(x), target) + 0.5 * tv
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(BACKGROUND, INK)
    return x.detach()


def probes_of(teacher, x: torch.Tensor) -> selection.Probes:
    with torch.no_grad():
        return selection.Probes(x, F.log_softmax(teacher(x), 1))


def attack(student, teacher, x, steps: int = 20, step: float = 0.05) -> float:
    for _ in range(steps):
        x = x.clone().requires_grad_(True)
        kl = F.kl_div(F.log_softmax(student(x), 1), F.softmax(teacher(x), 1), reduction="batchmean")
        (grad,) = torch.autograd.grad(kl, x)
        with torch.no_grad():
            x = (x + step * grad.sign()).clamp(BACKGROUND, INK)
    return -selection.score(student, probes_of(teacher, x)).kl


def spearman(a: list[float], b: list[float]) -> float:
    ra = torch.tensor(a).argsort().argsort().float()
    rb = torch.tensor(b).argsort().argsort().float()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def candidates(run: Path, seed: int, k: int) -> dict[str, Path]:
    found = {}
    for stage in sorted((run / f"seed{seed}").glob(f"student{k}-*")):
        method = stage.name.split("-", 1)[1]
        if (stage / "checkpoints/last.ckpt").exists() and (stage / "result.json").exists():
            found[f"{run.name}:{method}"] = stage
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group", action="append", required=True, help="run folders that share a teacher: a,b")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--students", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--fixed", nargs="*", default=[], help="methods to compare as fixed choices, run:method")
    parser.add_argument("--quick", action="store_true", help="the library's score only (no attack, no inversion)")
    args = parser.parse_args(argv)
    strokes = {"background": BACKGROUND, "ink": INK}
    results = defaultdict(list)  # score -> [(teacher, accuracy lost, spearman, pick)]
    for group in args.group:
        runs = [Path(p) for p in group.split(",")]
        for seed in args.seeds:
            generators = runs[0] / f"seed{seed}/generator/checkpoints/last.ckpt"
            loaded_teacher = None
            for k in args.students:
                rows = {}
                for run in runs:
                    for name, stage in candidates(run, seed, k).items():
                        loaded = selection.load_stage(stage / "checkpoints/last.ckpt")
                        student, teacher = loaded.student.requires_grad_(False), loaded.teacher
                        if loaded_teacher is None:
                            loaded_teacher = teacher
                            shape, classes = loaded.input_shape, loaded.num_classes
                            sources = selection.probe_sources(shape, strokes, str(generators))
                            every = selection.make_probes(
                                teacher, sources, shape, classes, seed, confidence=0.0, fill=BACKGROUND
                            )
                            sure = every.teacher_log_probs.exp().amax(1) >= selection.CONFIDENCE
                            chosen = selection.Probes(every.inputs[sure], every.teacher_log_probs[sure])
                            per_source = dict(zip(sources, every.inputs.split(selection.PER_SOURCE), strict=True))
                            small = every.inputs[
                                torch.randperm(len(every.inputs), generator=torch.Generator().manual_seed(seed))[:512]
                            ]
                            inv = None if args.quick else probes_of(teacher, inverted(teacher, shape, classes, seed))
                            print(
                                f"{runs[0].name} seed {seed}: {len(chosen.inputs)} of {len(every.inputs)} probes sure",
                                flush=True,
                            )
                        acc = json.loads((stage / "result.json").read_text())["test/acc"] * 100
                        mine = selection.score(student, chosen)
                        row = {"acc": acc, "chosen": mine.key(), "chosen_kl": -mine.kl}
                        row["mix"] = selection.score(student, every).agreement
                        if not args.quick:
                            row["attack"] = attack(student, teacher, small)
                            inverse = selection.score(student, inv)
                            row["inverted"], row["inverted_kl"] = inverse.agreement, -inverse.kl
                        for source, x in per_source.items():
                            row[f"own:{source}"] = selection.score(student, probes_of(teacher, x)).agreement
                        rows[name] = row
                if not rows:
                    continue
                print(f"  student {k}")
                for name, r in sorted(rows.items(), key=lambda kv: -kv[1]["acc"]):
                    shown = {key: (v[0] if isinstance(v, tuple) else v) for key, v in r.items()}
                    print(f"    {name:36s} " + " ".join(f"{key}={value:.4f}" for key, value in shown.items()))
                names = list(rows)
                accs = [rows[n]["acc"] for n in names]
                best = max(accs)
                for key in [key for key in rows[names[0]] if key != "acc"]:
                    values = [rows[n][key] for n in names]
                    pick = names[max(range(len(names)), key=values.__getitem__)]
                    flat = [v[0] if isinstance(v, tuple) else v for v in values]
                    results[key].append((runs[0].name, best - rows[pick]["acc"], spearman(flat, accs), pick))
                for fixed in args.fixed:
                    if fixed in rows:
                        results[f"always {fixed}"].append(
                            (runs[0].name, best - rows[fixed]["acc"], float("nan"), fixed)
                        )
                sys.stdout.flush()
    teachers = list(dict.fromkeys(r[0] for rs in results.values() for r in rs))
    print("\nscore            " + "".join(f"{t + ' regret':>26s}" for t in teachers) + "   spearman   picks")
    for key, rs in results.items():
        cells = "".join(
            f"{statistics.mean(r[1] for r in rs if r[0] == t):26.2f}" if any(r[0] == t for r in rs) else f"{'-':>26s}"
            for t in teachers
        )
        rho = [r[2] for r in rs if r[2] == r[2]]
        picks = defaultdict(int)
        for r in rs:
            picks[r[3]] += 1
        print(f"{key:16s} {cells} {statistics.mean(rho) if rho else float('nan'):10.2f}   {dict(picks)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
