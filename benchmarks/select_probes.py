"""Which data-free probes tell the best student apart, also between methods? Record once, score many ways.

``kegnet_pl.selection`` scores a run's students by their agreement with the teacher on the probes the teacher is sure
of, and most of those probes are samples of the run's own generators: between a KegNet and a DFAD LeNet-5-half it
chose KegNet's (80.32% on the test images) over DFAD's (96.68%), because KegNet's student was trained on those very
samples (README, "Where the score fails"). This script records, for every candidate student of a pipeline run folder,
its prediction and KL divergence from the teacher on each probe of many probe sets, some of which no candidate trained
on, so that any score built from them can be compared afterwards without loading a network again:

``dump``  writes the records (a ``torch.save`` file; a GPU helps with the inverted probes):

* ``uniform``, ``normal``, ``strokes``, ``generators``: the library's sources, drawn as it draws them (seeded by the
  seed and the source's name) but not moved: the score before moved probes, which leaned towards KegNet's students;
* ``generators_other``: the generators of another seed of the run, the first in ``--seeds`` that has them (trained
  apart from every candidate of this seed);
* ``generators_moved`` / ``strokes_moved``: fresh samples of the seed's generators / of the pen strokes, each shifted
  by up to 3 pixels and rotated by up to 20 degrees on blank paper (inputs near, but not in, what candidates saw);
* ``strokes_thick``: pen strokes of another hand (2 to 6 strokes, 2 to 3 pixels half-width), which no candidate saw;
* ``inverted``: inputs optimised from blank paper to make the teacher call a random class (cross-entropy plus total
  variation; ``benchmarks/select_study.py``);
* ``adversary:METHOD``: samples of each candidate's own adversarial generator (DFAD's, KegNet's adversary), from its
  checkpoint, for every candidate of that seed and student.

``report`` reads one or more records and prints, per score, the accuracy lost against the best candidate of each
(seed, student) on the real test images (mean and worst), overall and without the candidates of ``--drop`` methods.
Real data only scores the choice here: the test accuracy is each stage's own ``result.json``.

    python benchmarks/select_probes.py dump --run runs/pipeline/select --seeds 0 1 2 --students 1 2 3 4 \
        --out runs/select_probes.pt --device cuda
    python benchmarks/select_probes.py report runs/select_probes.pt
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
from kegnet_pl.data.sources import DFADGenerator, KegnetGenerators, Strokes
from kegnet_pl.selection import moved

sys.path.insert(0, str(Path(__file__).resolve().parent))
from select_study import BACKGROUND, INK, inverted  # noqa: E402
from select_study import candidates as select_study_candidates  # noqa: E402

N = selection.PER_SOURCE


def candidates(run: Path, seed: int, k: int) -> dict[str, Path]:
    """method -> stage folder of one seed and student's trained students (select_study's, without the run name)."""
    return {name.split(":", 1)[1]: stage for name, stage in select_study_candidates(run, seed, k).items()}


def load(stage: Path, device: str):
    module = selection.load_student_stage(stage / "checkpoints/last.ckpt", device)
    adversary = next((part for part in module.source.modules() if isinstance(part, DFADGenerator)), None)
    return module.student.eval(), module.teacher.eval(), module, adversary


@torch.no_grad()
def outputs(net, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([F.log_softmax(net(part).float(), 1) for part in x.split(selection.BATCH)])


@torch.no_grad()
def shared_sets(run: Path, seed: int, seeds: list[int], teacher, shape, classes, device) -> dict[str, torch.Tensor]:
    """The probe sets of one seed that every student shares (on ``device``)."""
    own = run / f"seed{seed}/generator/checkpoints/last.ckpt"
    others = [
        path for path in (run / f"seed{s}/generator/checkpoints/last.ckpt" for s in seeds if s != seed) if path.exists()
    ]
    strokes = {"background": BACKGROUND, "ink": INK}
    library = {
        name: source for name, source in selection.probe_sources(shape, strokes, str(own)).items() if name in LIBRARY
    }
    sets = {}
    for name, source in library.items():  # as selection.make_probes draws them
        source.bind(shape, classes)
        sets[name] = source.sample(N, torch.Generator().manual_seed(derive_seed("probes", seed, name))).float()

    def draw(name, source):
        source.bind(shape, classes)
        return source.sample(N, torch.Generator().manual_seed(derive_seed("select_probes", seed, name))).float()

    if others:  # the first other seed of the run that has generators
        sets["generators_other"] = draw("generators_other", KegnetGenerators(str(others[0])))
    gen = torch.Generator().manual_seed(derive_seed("select_probes", seed, "moved"))
    sets["generators_moved"] = moved(draw("generators_fresh", KegnetGenerators(str(own))), gen, fill=BACKGROUND)
    sets["strokes_moved"] = moved(draw("strokes_fresh", Strokes(**strokes)), gen, fill=BACKGROUND)
    sets["strokes_thick"] = draw("strokes_thick", Strokes(**strokes, **selection.OTHER_HAND))
    with torch.enable_grad():  # the teacher was loaded onto ``device``
        sets["inverted"] = inverted(teacher, shape, classes, seed, device=device)
    return {name: x.to(device) for name, x in sets.items()}


def dump(args) -> int:
    run = Path(args.run)
    entries = []
    for seed in args.seeds:
        shared = None
        for k in args.students:
            found = candidates(run, seed, k)
            if not found:
                continue
            loaded = {method: load(stage, args.device) for method, stage in found.items()}
            teacher = next(iter(loaded.values()))[1]
            module = next(iter(loaded.values()))[2]
            shape, classes = tuple(module.input_shape), int(module.num_classes)
            if shared is None:
                shared = shared_sets(run, seed, args.seeds, teacher, shape, classes, args.device)
            sets = dict(shared)
            for method, (_, _, _, adversary) in loaded.items():
                if adversary is not None:
                    generator = torch.Generator().manual_seed(derive_seed("select_probes", seed, k, method))
                    with torch.no_grad():
                        adversary.train()  # batch statistics, as the student saw its samples
                        sets[f"adversary:{method}"] = adversary.sample(N, generator, args.device).float()
            teacher_log = {name: outputs(teacher, x) for name, x in sets.items()}
            entry = {
                "run": run.name,
                "seed": seed,
                "student": k,
                "teacher": {
                    name: {"conf": t.exp().amax(1).half().cpu(), "pred": t.argmax(1).to(torch.int8).cpu()}
                    for name, t in teacher_log.items()
                },
                "candidates": {},
            }
            for method, (student, *_rest) in loaded.items():
                result = json.loads((found[method] / "result.json").read_text())
                record = {"acc": 100 * float(result["test/acc"]), "sets": {}}
                for name, x in sets.items():
                    log = outputs(student, x)
                    kl = (teacher_log[name].exp() * (teacher_log[name] - log)).sum(1)
                    record["sets"][name] = {"pred": log.argmax(1).to(torch.int8).cpu(), "kl": kl.half().cpu()}
                entry["candidates"][method] = record
            entries.append(entry)
            print(
                f"seed {seed} student {k}: " + ", ".join(f"{m} {r['acc']:.2f}" for m, r in entry["candidates"].items()),
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"entries": entries}, args.out)
    print(f"wrote {args.out}: {len(entries)} (seed, student) pairs")
    return 0


# ---- scores ----------------------------------------------------------------------------------------------------


def sure_stats(entry, method, names, confidence):
    """Per set: (agreeing, probes, KL sum) over the probes the teacher is sure of."""
    stats = {}
    for name in names:
        if name not in entry["teacher"]:
            continue
        teacher = entry["teacher"][name]
        sure = teacher["conf"].float() >= confidence
        record = entry["candidates"][method]["sets"][name]
        agree = int(((record["pred"] == teacher["pred"]) & sure).sum())
        stats[name] = (agree, int(sure.sum()), float(record["kl"].float()[sure].sum()))
    return stats


def pooled(names, confidence=selection.CONFIDENCE, use="agree"):
    def score(entry, method):
        stats = sure_stats(entry, method, names(entry) if callable(names) else names, confidence)
        n = sum(s[1] for s in stats.values())
        if n == 0:
            return float("nan")
        return sum(s[0] for s in stats.values()) / n if use == "agree" else -sum(s[2] for s in stats.values()) / n

    return score


def per_source(names, confidence=selection.CONFIDENCE, use="agree", least=20):
    """Mean over sets (each with at least ``least`` sure probes) of the set's agreement (or minus its mean KL)."""

    def score(entry, method):
        stats = sure_stats(entry, method, names(entry) if callable(names) else names, confidence)
        values = [(s[0] / s[1] if use == "agree" else -s[2] / s[1]) for s in stats.values() if s[1] >= least]
        return statistics.mean(values) if values else float("nan")

    return score


def adversaries(entry):
    return [name for name in entry["teacher"] if name.startswith("adversary:")]


LIBRARY = ["uniform", "normal", "strokes", "generators"]
HELD_OUT = ["generators_other", "generators_moved", "strokes_moved", "strokes_thick", "inverted"]
SCORES = {
    "unmoved library sources, pooled (the score before)": pooled(LIBRARY),
    "library KL": pooled(LIBRARY, use="kl"),
    "library, per-set mean": per_source(LIBRARY),
    "library + adversaries, pooled": pooled(lambda e: LIBRARY + adversaries(e)),
    "library + adversaries, per-set mean": per_source(lambda e: LIBRARY + adversaries(e)),
    "other seed's generators for own": pooled(["uniform", "normal", "strokes", "generators_other"]),
    "held-out sets, pooled": pooled(HELD_OUT),
    "held-out sets, pooled KL": pooled(HELD_OUT, use="kl"),
    "held-out sets, pooled, confidence 0.9": pooled(HELD_OUT, 0.9),
    "held-out sets, pooled, confidence 0.99": pooled(HELD_OUT, 0.99),
    "held-out but other seed's generators, pooled": pooled(HELD_OUT[1:]),
    "held-out but inverted, pooled": pooled(HELD_OUT[:-1]),
    "held-out but other seed's and inverted, pooled": pooled(HELD_OUT[1:-1]),
    "moved and thick, pooled (the score now; other draws)": pooled(HELD_OUT[1:4]),
    "held-out sets, per-set mean": per_source(HELD_OUT),
    "held-out sets, per-set mean KL": per_source(HELD_OUT, use="kl"),
    "held-out + adversaries, per-set mean": per_source(lambda e: HELD_OUT + adversaries(e)),
    "everything, per-set mean": per_source(lambda e: LIBRARY + HELD_OUT + adversaries(e)),
    **{f"set {name}": pooled([name]) for name in LIBRARY[2:] + HELD_OUT},
    "adversaries, pooled": pooled(adversaries),
}


def report(args) -> int:
    entries = [entry for path in args.records for entry in torch.load(path, weights_only=False)["entries"]]
    print(f"{len(entries)} (seed, student) pairs; methods: {sorted({m for e in entries for m in e['candidates']})}")
    for entry in entries:
        cells = ", ".join(
            f"{m} {r['acc']:.2f}" for m, r in sorted(entry["candidates"].items(), key=lambda i: -i[1]["acc"])
        )
        sure = ", ".join(
            f"{name} {int((t['conf'].float() >= selection.CONFIDENCE).sum())}" for name, t in entry["teacher"].items()
        )
        print(f"  {entry['run']} seed {entry['seed']} student {entry['student']}: {cells}\n      sure: {sure}")
    views = {"all candidates": set()}
    for drop in args.drop:
        views[f"without {drop}"] = set(drop.split(","))
    for view, dropped in views.items():
        print(f"\n{view}: accuracy lost against the best candidate (mean / worst over pairs), and picks")
        for label, score in SCORES.items():
            lost, picks = [], defaultdict(int)
            for entry in entries:
                cands = {m: r for m, r in entry["candidates"].items() if m not in dropped}
                if len(cands) < 2:
                    continue
                values = {m: score(entry, m) for m in cands}
                ranked = [m for m in values if values[m] == values[m]]
                if not ranked:
                    continue
                pick = max(ranked, key=values.__getitem__)
                best = max(r["acc"] for r in cands.values())
                lost.append(best - cands[pick]["acc"])
                picks[pick] += 1
            if lost:
                print(f"  {label:44s} {statistics.mean(lost):6.2f} / {max(lost):6.2f}   {dict(sorted(picks.items()))}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="record every candidate's predictions on the probe sets")
    d.add_argument("--run", required=True, help="a kegnet-pipeline run folder")
    d.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    d.add_argument("--students", type=int, nargs="+", default=[1, 2, 3, 4])
    d.add_argument("--out", required=True)
    d.add_argument("--device", default="cpu")
    r = sub.add_parser("report", help="score the recorded candidates many ways")
    r.add_argument("records", nargs="+")
    r.add_argument("--drop", nargs="*", default=[], help="also report without these methods (a,b)")
    args = parser.parse_args(argv)
    return dump(args) if args.command == "dump" else report(args)


if __name__ == "__main__":
    raise SystemExit(main())
