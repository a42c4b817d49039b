"""Choosing a student without data: probes the teacher is sure of, the score on them, and the choice."""

import math
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from kegnet_pl.data.noise import derive_seed
from kegnet_pl.data.sources import UniformNoise
from kegnet_pl.selection import OTHER_HAND, Probes, Score, choose, make_probes, moved, probe_sources, score


class Sign(nn.Module):
    """Two classes decided by the sign of the first input, as sure as ``scale`` times its size."""

    def __init__(self, scale=10.0, flip=False):
        super().__init__()
        self.scale, self.flip = scale, flip

    def forward(self, x):
        first = x.flatten(1)[:, :1] * self.scale * (-1 if self.flip else 1)
        return torch.cat([first, -first], 1)


def test_only_the_probes_the_teacher_is_sure_of_count():
    teacher = Sign()
    probes = make_probes(teacher, probe_sources((4,)), (4,), 2, seed=0, per_source=500, confidence=0.95)
    assert probes.drawn == {"uniform": 500, "normal": 500}
    # sure means softmax([a, -a]) >= 0.95, i.e. |20 x| >= log(19): U(-1, 1) keeps about 85% of its draws
    assert 0.8 * 500 < probes.kept["uniform"] < 0.9 * 500
    assert len(probes.inputs) == sum(probes.kept.values()) == len(probes.teacher_log_probs)
    assert (probes.inputs[:, 0].abs() * 20 >= math.log(19) - 1e-5).all()
    assert (probes.teacher_log_probs.exp().amax(1) >= 0.95).all()
    assert "of 1,000 probes (uniform" in probes.describe()


def test_probes_are_the_same_for_a_seed_and_differ_between_seeds():
    draw = [make_probes(Sign(), probe_sources((4,)), (4,), 2, seed=s, per_source=64).inputs for s in (0, 0, 1)]
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0][:10], draw[2][:10])


def test_strokes_are_probes_only_for_images_with_settings():
    settings = {"background": -0.5, "ink": 2.0, "width": (0.5, 1.0)}
    sources = probe_sources((1, 8, 8), settings)
    assert "strokes" in sources and "thick strokes" in sources
    assert sources["strokes"].width == (0.5, 1.0) and sources["strokes"].max_strokes == 3
    other = sources["thick strokes"]  # the run's paper and ink, another hand
    assert (other.background, other.ink) == (-0.5, 2.0)
    assert (other.width, other.max_strokes) == (tuple(OTHER_HAND["width"]), OTHER_HAND["max_strokes"])
    assert "strokes" not in probe_sources((1, 8, 8)) and "thick strokes" not in probe_sources((1, 8, 8))
    assert "strokes" not in probe_sources((64,), settings)


def dot(size=15, row=7, col=7, background=-0.5, ink=2.0):
    image = torch.full((1, 1, size, size), background)
    image[0, 0, row, col] = ink
    return image


def test_moved_images_shift_and_turn_within_bounds_on_blank_paper():
    generator = torch.Generator().manual_seed(0)
    images = dot().repeat(200, 1, 1, 1)
    out = moved(images, generator, shift=3.0, rotate=0.0, fill=-0.5)
    assert out.shape == images.shape
    ink = out + 0.5  # the ink above blank paper, wherever the dot went
    rows = (ink.sum(3).squeeze(1) * torch.arange(15.0)).sum(1) / ink.sum((1, 2, 3))
    cols = (ink.sum(2).squeeze(1) * torch.arange(15.0)).sum(1) / ink.sum((1, 2, 3))
    assert (rows - 7).abs().max() <= 3 + 1e-4 and (cols - 7).abs().max() <= 3 + 1e-4
    assert (rows - 7).abs().max() > 2 and (rows - 7).std() > 1  # they do move, each its own way
    corner = moved(dot(row=0, col=0).repeat(50, 1, 1, 1), generator, shift=3.0, rotate=20.0, fill=-0.5)
    far = corner[:, 0, 8:, 8:]  # blank paper moved in stays blank paper: no ink appears away from the dot
    assert torch.allclose(far, torch.full_like(far, -0.5), atol=1e-5)
    assert torch.allclose(moved(images, generator, shift=0.0, rotate=0.0), images, atol=1e-5)


def test_moved_without_paper_repeats_the_edge():
    flat = torch.full((4, 1, 9, 9), 0.3)
    assert torch.allclose(moved(flat, torch.Generator().manual_seed(0), fill=None), flat, atol=1e-6)
    assert not torch.allclose(moved(flat, torch.Generator().manual_seed(0), fill=-1.0), flat, atol=1e-3)


class Memoriser(nn.Module):
    """Agrees with ``teacher`` on the inputs it was shown, and with its opposite anywhere else."""

    def __init__(self, teacher, seen):
        super().__init__()
        self.teacher, self.seen = teacher, seen

    def forward(self, x):
        out = self.teacher(x)
        known = (x.flatten(1)[:, None] == self.seen.flatten(1)[None]).all(2).any(1)
        return torch.where(known[:, None], out, -out)


def test_a_student_that_knows_only_its_training_samples_scores_nothing_on_moved_probes():
    shape, teacher = (1, 6, 6), Sign(scale=30.0)
    source = UniformNoise()
    source.bind(shape, 2)
    seen = source.sample(256, torch.Generator().manual_seed(derive_seed("probes", 0, "uniform")))
    student = Memoriser(teacher, seen)  # trained on the very draws the probes make
    sources = {"uniform": UniformNoise()}
    unmoved = make_probes(teacher, sources, shape, 2, seed=0, per_source=256, move=False)
    assert score(student, unmoved).agreement == 1.0
    probes = make_probes(teacher, sources, shape, 2, seed=0, per_source=256)
    assert len(probes.inputs) > 100 and score(student, probes).agreement == 0.0
    assert score(teacher, probes).agreement == 1.0


def test_the_teacher_itself_scores_one_and_a_student_that_disagrees_less():
    probes = make_probes(Sign(), probe_sources((4,)), (4,), 2, seed=0, per_source=256)
    same = score(Sign(), probes)
    assert same.agreement == 1.0 and same.kl == pytest.approx(0.0, abs=1e-6)
    opposite = score(Sign(flip=True), probes)
    assert opposite.agreement == 0.0 and opposite.kl > 1
    unsure = score(Sign(scale=1.0), probes)  # right on every probe, less sure than the teacher
    assert unsure.agreement == 1.0 and unsure.kl > 0.01


def test_no_probe_the_teacher_is_sure_of_gives_no_score():
    empty = Probes(torch.empty(0, 4), torch.empty(0, 2))
    result = score(Sign(), empty)
    assert math.isnan(result.agreement)
    assert choose({"a": result}) is None


def test_the_choice_is_the_highest_agreement_then_the_lowest_kl():
    assert choose({"a": Score(0.90, 0.1), "b": Score(0.95, 0.3), "c": Score(0.93, 0.0)}) == "b"
    assert choose({"a": Score(0.95, 0.2), "b": Score(0.95, 0.1)}) == "b"
    assert choose({"a": Score(float("nan"), float("nan")), "b": Score(0.5, 1.0)}) == "b"
    assert choose({}) is None


def perturbed(source, target, scale):
    """A copy of a student checkpoint whose student weights carry noise of ``scale`` (the teacher untouched)."""
    checkpoint = torch.load(source, weights_only=True)
    generator = torch.Generator().manual_seed(1)
    for key, value in checkpoint["state_dict"].items():
        if key.startswith("student.") and value.is_floating_point():
            value.add_(scale * value.std() * torch.randn(value.shape, generator=generator))
    torch.save(checkpoint, target)
    return str(target)


def test_kegnet_choose_names_the_student_closest_to_the_teacher(tiny_checkpoints, tmp_path, capsys):
    from kegnet_pl.cli import main

    original = str(tiny_checkpoints["student"])
    noisy = perturbed(original, tmp_path / "noisy.ckpt", 1.0)
    main(["choose", noisy, original, "--generators", str(tiny_checkpoints["generator"])])
    out = capsys.readouterr().out.splitlines()
    assert "probes (uniform" in out[0] and "generators" in out[0]
    assert out[1].startswith("* agreement") and out[1].endswith(original)  # best first, marked
    assert out[2].startswith("  agreement") and out[2].endswith(noisy)
    assert out[-1] == f"chosen: {original}"
    first, second = (float(line.split()[-4].rstrip("%")) for line in out[1:3])
    assert first > second
    main(["choose", noisy, original])  # the generators a KegNet student's checkpoint holds: the same probes
    assert capsys.readouterr().out.splitlines() == out


def test_kegnet_choose_takes_a_stage_folder_as_its_last_checkpoint(tiny_checkpoints, tmp_path, capsys):
    from kegnet_pl.cli import main

    original = str(tiny_checkpoints["student"])
    stage = tmp_path / "seed0" / "student1-kegnet"
    (stage / "checkpoints").mkdir(parents=True)
    shutil.copy(original, stage / "checkpoints" / "last.ckpt")
    noisy = perturbed(original, tmp_path / "noisy.ckpt", 1.0)
    main(["choose", noisy, str(stage)])
    assert capsys.readouterr().out.splitlines()[-1] == f"chosen: {stage / 'checkpoints' / 'last.ckpt'}"
    empty = tmp_path / "seed0" / "student2-kegnet"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["choose", noisy, str(empty)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "folder without checkpoints/last.ckpt" in err and str(empty) in err and len(err.splitlines()) == 1


def test_kegnet_choose_refuses_students_of_another_teacher_and_files_without_a_student(tiny_checkpoints, tmp_path):

    original = str(tiny_checkpoints["student"])
    checkpoint = torch.load(original, weights_only=True)
    for key, value in checkpoint["state_dict"].items():
        if key.startswith("teacher."):
            value.mul_(1.01)
    other = tmp_path / "other_teacher.ckpt"
    torch.save(checkpoint, other)
    generators = torch.load(tiny_checkpoints["generator"], weights_only=True)
    for key, value in generators["state_dict"].items():
        if key.startswith("teacher."):
            value.mul_(1.01)
    other_generators = tmp_path / "other_generators.ckpt"
    torch.save(generators, other_generators)
    for args, message in [
        ([original, str(other)], "was distilled from another teacher"),
        ([original, "--generators", str(other_generators)], "were trained against another teacher than the students'"),
        ([original, str(tiny_checkpoints["teacher"])], "holds no student"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "kegnet_pl.cli", "choose", *args], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.splitlines()) == 1
