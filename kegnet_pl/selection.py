"""Choosing between students without data: agreement with the teacher where the teacher is sure, on moved probes.

A run trains several students of one size (KegNet and its baselines, other methods) and a user must ship one of
them without real data to compare them on. Each student's agreement with the teacher on the inputs it trained on
does not compare across students (every one is scored on its own kind of inputs), and neither does its agreement on
one common mixture of artificial inputs: there the students trained on noise win, because most of such a mixture is
noise on which the teacher itself is unsure; and a student scored on the very samples it trained on is favoured.

The score here keeps only artificial inputs that the teacher is *sure* about and that no candidate trained on:
probes drawn from every source the run knows (U(-1, 1), N(0, 1), pen strokes where the run draws them, the run's
generators) and, for images, each one *moved*: shifted by up to :data:`SHIFT` pixels and turned by up to
:data:`ROTATE` degrees, on blank paper; beside them pen strokes of another hand (thicker, more of them:
:data:`OTHER_HAND`), which no source draws. Of those only the probes that the teacher calls with a top-class
probability of at least :data:`CONFIDENCE` count. A student's score is the share of them on which its top class is
the teacher's (ties broken by the lower KL divergence from the teacher on them). Every candidate of a seed is scored
on the same probes. Real data plays no part.

Why moved: unmoved, most of the sure probes are samples of the run's own generators, on which KegNet's students
were trained, and the score leaned towards them. Between a KegNet and a DFAD LeNet-5-half trained from scratch it
chose KegNet's (80.32% on the test images) over DFAD's (96.68%). Measured on full MNIST (README, "Choosing a student
without data"; ``benchmarks/select_probes.py``): over 17 (seed, student) pairs of two teachers with four to six
candidates each (KegNet, DFAD, the noise, pen-strokes and no-generators baselines; the paper's three Tucker students
and LeNet-5-half from scratch), the chosen student was on average 0.02 points below the best candidate of its pair
on the real test images (worst 0.07) with moved probes, 3.48 (worst 18.47) unmoved; on a fourth teacher, checked after
the score was fixed, 0.58 (worst 2.16) against 0.70 (2.65). Between candidates within a few tenths of a point it is
no better than a coin. Images only: probes of other inputs are not moved, and there the score keeps that lean.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from kegnet_pl.data.noise import derive_seed
from kegnet_pl.data.sources import KegnetGenerators, NormalNoise, SampleSource, Strokes, UniformNoise
from kegnet_pl.errors import CheckpointError, KegnetError

#: The teacher's top-class probability from which a probe counts.
CONFIDENCE = 0.95
#: Probes drawn from each source.
PER_SOURCE = 2048
#: Inputs per forward pass while scoring.
BATCH = 1024
#: How far an image probe moves: shifted by up to this many pixels in each direction ...
SHIFT = 3.0
#: ... and turned by up to this many degrees about its centre.
ROTATE = 20.0
#: The pen strokes of another hand, drawn beside the run's own (their settings override the run's).
OTHER_HAND: dict[str, Any] = {"max_strokes": 6, "width": (2.0, 3.0)}

Key = TypeVar("Key")


@dataclass
class Probes:
    """The probes that count (``inputs``) with the teacher's log-probabilities on them (``teacher_log_probs``), and
    how many each source gave before and after the teacher's confidence was asked (``drawn`` / ``kept``)."""

    inputs: torch.Tensor
    teacher_log_probs: torch.Tensor
    drawn: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        parts = ", ".join(f"{name} {self.kept[name]:,}/{self.drawn[name]:,}" for name in self.drawn)
        return f"{len(self.inputs):,} of {sum(self.drawn.values()):,} probes ({parts})"


@dataclass(frozen=True)
class Score:
    """A student's agreement with the teacher on the probes (a share, 0 to 1) and its mean KL divergence there."""

    agreement: float
    kl: float

    def key(self) -> tuple[float, float]:
        """Higher is better: agreement first, then the lower KL."""
        return (self.agreement, -self.kl)


def probe_sources(
    input_shape: Sequence[int],
    strokes: Mapping[str, Any] | None = None,
    generators: str | KegnetGenerators | None = None,
) -> dict[str, SampleSource]:
    """The sources of the probes: U(-1, 1) and N(0, 1) noise, pen strokes with the ``strokes`` settings and pen
    strokes of another hand (:data:`OTHER_HAND`; both only for image inputs, and only when settings are given), and
    KegNet generators (or a GeneratorModule checkpoint's)."""
    sources: dict[str, SampleSource] = {"uniform": UniformNoise(), "normal": NormalNoise()}
    if strokes is not None and len(tuple(input_shape)) == 3:
        sources["strokes"] = Strokes(**dict(strokes))
        sources["thick strokes"] = Strokes(**{**dict(strokes), **OTHER_HAND})
    if generators is not None:
        sources["generators"] = KegnetGenerators(generators) if isinstance(generators, str) else generators
    return sources


def moved(
    images: torch.Tensor,
    generator: torch.Generator,
    shift: float = SHIFT,
    rotate: float = ROTATE,
    fill: float | None = None,
) -> torch.Tensor:
    """``images`` (n, channels, height, width), each shifted by up to ``shift`` pixels along each axis and turned by
    up to ``rotate`` degrees about its centre (uniformly, bilinear); pixels moved in from outside take ``fill``
    (blank paper), or the nearest edge pixel when ``fill`` is None."""
    n, _, height, width = images.shape
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(rotate)
    offset = (torch.rand(n, 2, generator=generator) * 2 - 1) * shift * 2 / torch.tensor([width, height])
    theta = torch.stack(
        [
            torch.stack([angle.cos(), -angle.sin(), offset[:, 0]], 1),
            torch.stack([angle.sin(), angle.cos(), offset[:, 1]], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    if fill is None:
        return F.grid_sample(images, grid, padding_mode="border", align_corners=False)
    return F.grid_sample(images - fill, grid, align_corners=False) + fill


@torch.no_grad()
def make_probes(
    teacher: nn.Module,
    sources: Mapping[str, SampleSource],
    input_shape: Sequence[int],
    num_classes: int,
    seed: int,
    per_source: int = PER_SOURCE,
    confidence: float = CONFIDENCE,
    move: bool = True,
    fill: float | None = None,
) -> Probes:
    """Draw ``per_source`` inputs from each source (each with its own generator, seeded by ``seed`` and the source's
    name), move them when they are images and ``move`` is set (:func:`moved`, with ``fill`` as blank paper), and keep
    those that ``teacher`` calls with a top-class probability of at least ``confidence``."""
    kept_inputs, kept_log_probs, drawn, kept = [], [], {}, {}
    for name, source in sources.items():
        source.bind(input_shape, num_classes)
        generator = torch.Generator().manual_seed(derive_seed("probes", seed, name))
        inputs = source.sample(per_source, generator).float()
        if move and inputs.dim() == 4:
            inputs = moved(inputs, torch.Generator().manual_seed(derive_seed("probes", "moved", seed, name)), fill=fill)
        log_probs = torch.cat([F.log_softmax(teacher(part), 1) for part in inputs.split(BATCH)])
        sure = log_probs.exp().amax(1) >= confidence
        kept_inputs.append(inputs[sure])
        kept_log_probs.append(log_probs[sure])
        drawn[name], kept[name] = per_source, int(sure.sum())
    return Probes(torch.cat(kept_inputs), torch.cat(kept_log_probs), drawn, kept)


@torch.no_grad()
def score(student: nn.Module, probes: Probes) -> Score:
    """``student``'s agreement with the teacher on ``probes`` and its mean KL divergence from the teacher there
    (NaN agreement when no probe counts)."""
    if len(probes.inputs) == 0:
        return Score(float("nan"), float("nan"))
    same, kl = 0, 0.0
    for inputs, teacher in zip(probes.inputs.split(BATCH), probes.teacher_log_probs.split(BATCH), strict=True):
        log_probs = F.log_softmax(student(inputs).float(), 1)
        same += int((log_probs.argmax(1) == teacher.argmax(1)).sum())
        kl += float((teacher.exp() * (teacher - log_probs)).sum())
    return Score(same / len(probes.inputs), kl / len(probes.inputs))


def choose(scores: Mapping[str, Score]) -> str | None:
    """The name of the best-scoring candidate (None when none has a score)."""
    ranked = [(value.key(), name) for name, value in scores.items() if value.agreement == value.agreement]
    return max(ranked)[1] if ranked else None


@dataclass
class Loaded:
    """A student stage's checkpoint: its student and teacher networks (eval mode, CPU), the teacher's input shape and
    class count, and the pen strokes' settings and KegNet generators its student was distilled from (if any)."""

    student: nn.Module
    teacher: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    strokes: dict[str, Any] | None = None
    generators: KegnetGenerators | None = None


def load_student_stage(checkpoint: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """The module (StudentModule, DFADModule, DAFLModule) of a student stage's checkpoint; a clear error for a
    checkpoint of another kind of stage."""
    from kegnet_pl.export import student_class
    from kegnet_pl.loading import read_checkpoint, recorded_module

    obj = read_checkpoint(checkpoint)
    state = obj.get("state_dict")
    if not isinstance(state, Mapping) or not any(str(key).startswith("student.") for key in state):
        raise CheckpointError(
            f"{str(checkpoint)!r} holds no student; give checkpoints of student stages (StudentModule, DFADModule, "
            "DAFLModule), such as <run>/seed0/student1-kegnet/checkpoints/last.ckpt"
        )
    return student_class(recorded_module(obj)).load_from_checkpoint(str(checkpoint), map_location=map_location)


def load_stage(checkpoint: str | Path) -> Loaded:
    """The student and teacher of a StudentModule (DFADModule, DAFLModule) checkpoint."""
    module = load_student_stage(checkpoint)
    strokes = module.hparams.get("strokes")
    trained_on = next((part for part in module.source.modules() if isinstance(part, KegnetGenerators)), None)
    generators = None
    if trained_on is not None:  # every generator, one-hot labels: the probes the pipeline draws from its file
        generators = KegnetGenerators(generator_spec=trained_on.generator_spec)
        generators.generators.load_state_dict(trained_on.generators.state_dict())
    return Loaded(
        module.student.eval(),
        module.teacher.eval(),
        tuple(module.input_shape),
        int(module.num_classes),
        dict(strokes) if isinstance(strokes, Mapping) else None,
        generators,
    )


def score_students(
    loaded: Mapping[Key, Loaded], seed: int, generators: str | None = None
) -> tuple[Probes, dict[Key, Score]]:
    """Score students of one teacher on the same probes: the noise sources, pen strokes with the settings the students
    were given (if any) and of another hand, and the generators of ``generators`` (a GeneratorModule checkpoint) or
    else those a KegNet student's checkpoint holds; drawn with ``seed`` and moved (on the strokes' blank paper where
    the students were given strokes, else repeating the edge pixels)."""
    first = next(iter(loaded.values()))
    strokes = next((item.strokes for item in loaded.values() if item.strokes), None)
    found = generators or next((item.generators for item in loaded.values() if item.generators), None)
    sources = probe_sources(first.input_shape, strokes, found)
    fill = sources["strokes"].background if "strokes" in sources else None
    probes = make_probes(first.teacher, sources, first.input_shape, first.num_classes, seed, fill=fill)
    return probes, {key: score(item.student, probes) for key, item in loaded.items()}


def same_network(a: nn.Module, b: nn.Module) -> bool:
    """Whether two networks hold the same tensors under the same names."""
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(
        left[key].shape == right[key].shape and torch.equal(left[key], right[key]) for key in left
    )


PROG = "kegnet choose"


def stage_checkpoint(path: str) -> str:
    """``path`` itself, or for a stage folder (``<run>/seed0/student1-kegnet``) the last checkpoint inside it."""
    if not Path(path).is_dir():
        return path
    last = Path(path) / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise CheckpointError(
            f"{path!r} is a folder without checkpoints/last.ckpt; give a student checkpoint file or the folder of a "
            "student stage that has run (such as <run>/seed0/student1-kegnet)"
        )
    return str(last)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``kegnet choose``."""
    from kegnet_pl.errors import OneLineParser

    parser = OneLineParser(
        prog=PROG,
        description="Score student checkpoints of one teacher without data (agreement with the teacher on artificial "
        f"probes it calls with probability >= {CONFIDENCE}, images shifted and turned so that no student trained on "
        "them) and name the one to ship.",
    )
    parser.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CHECKPOINT",
        help="student checkpoints of one teacher, or stage folders (their checkpoints/last.ckpt is taken)",
    )
    parser.add_argument(
        "--generators",
        metavar="CKPT",
        help="a GeneratorModule checkpoint whose samples join the probes (default: the generators that a KegNet "
        "student among the checkpoints was distilled from, which its checkpoint holds)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the probes (default 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kegnet choose`` (the arguments after ``choose``): a line per checkpoint, best first, then the chosen one;
    exit 2 with one line for a file that is not a student checkpoint of the same teacher."""
    args = build_parser().parse_args(argv)
    try:
        loaded = {path: load_stage(path) for path in dict.fromkeys(map(stage_checkpoint, args.checkpoints))}
        first_path, first = next(iter(loaded.items()))
        for path, other in loaded.items():
            if (other.input_shape, other.num_classes) != (first.input_shape, first.num_classes) or not same_network(
                other.teacher, first.teacher
            ):
                raise CheckpointError(
                    f"{path!r} was distilled from another teacher than {first_path!r}; the score compares students "
                    "of one teacher only"
                )
        probes, scores = score_students(loaded, args.seed, args.generators)
        if args.generators is not None:  # a readable generator checkpoint (score_students checked): whose teacher?
            from kegnet_pl.modules import GeneratorModule

            extracted = GeneratorModule.load_from_checkpoint(args.generators, map_location="cpu").teacher
            if not same_network(extracted, first.teacher):
                raise CheckpointError(
                    f"--generators {args.generators!r} were trained against another teacher than the students' "
                    f"({first_path!r}); give generators of their teacher, or leave --generators out to use those a "
                    "KegNet student's checkpoint holds"
                )
    except KegnetError as err:
        build_parser().exit(2, f"{PROG}: error: {' '.join(str(err).split())}\n")
    chosen = choose(scores)
    print(f"{PROG}: {probes.describe()} the teacher is sure of")
    for path, value in sorted(scores.items(), key=lambda item: item[1].key(), reverse=True):
        mark = "*" if path == chosen else " "
        print(f"{mark} agreement {100 * value.agreement:6.2f}%  KL {value.kl:.4f}  {path}")
    if chosen is None:
        print("chosen: none (the teacher is sure of no probe; nothing to compare the students on)")
        return 1
    print(f"chosen: {chosen}")
    return 0
