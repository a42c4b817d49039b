"""StudentModule: compressed student, frozen teacher and source, sources by class_path, resume and checkpoints."""

import re

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import ROOT, TEACHER, quiet_trainer, tiny_config

from kegnet_pl.cli import main
from kegnet_pl.data import NoiseDataModule
from kegnet_pl.data.sources import KegnetGenerators, Mixture, NormalNoise, Pool, Strokes, UniformNoise
from kegnet_pl.errors import CheckpointError, ConfigError
from kegnet_pl.modules import StudentModule
from kegnet_pl.modules.student import describe


def student_config(tmp_path, generators, **model_args):
    return tiny_config(
        tmp_path,
        "student",
        model={"class_path": "StudentModule", "init_args": {"generators": generators, "pool_size": 40, **model_args}},
        data={
            "class_path": "NoiseDataModule",
            "init_args": {"batch_size": 16, "batches_per_epoch": 3, "val_batches": 2},
        },
        # no monitor: with one, Lightning 2.6 rewrites last.ckpt only in epochs that improve it
        **{"trainer.max_epochs": 2},
    )


def test_student_is_the_compressed_teacher(generator_ckpt):
    model = StudentModule(generators=generator_ckpt, student="lenet5-s3")
    assert isinstance(model.student.conv3, torch.nn.Sequential)
    assert model.hparams.student_ranks["conv3"] == [8, 5]
    assert sum(p.numel() for p in model.student.parameters()) < 61_706 / 4
    assert model.compression_ratio > 4
    x = torch.randn(4, 1, 32, 32)
    assert model(x).shape == (4, 10)


def test_optimizer_holds_only_student_parameters(generator_ckpt):
    model = StudentModule(generators=generator_ckpt)
    (group,) = model.configure_optimizers().param_groups
    assert {id(p) for p in group["params"]} == {id(p) for p in model.student.parameters()}
    assert all(p.requires_grad for p in model.student.parameters())
    assert not any(p.requires_grad for p in (*model.teacher.parameters(), *model.source.parameters()))


@pytest.mark.parametrize(("source", "pool_size"), [("kegnet", 40), ("kegnet", None), ("uniform", 40), ("normal", None)])
def test_teacher_and_generators_unchanged_after_fit(tmp_path, generator_ckpt, source, pool_size):
    model = StudentModule(generators=generator_ckpt, source=source, pool_size=pool_size, lr=1e-2)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("student.")}
    student_before = {k: v.clone() for k, v in model.student.state_dict().items()}
    quiet_trainer(tmp_path, max_steps=3).fit(model, NoiseDataModule(batch_size=8, batches_per_epoch=3))
    after = model.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    assert any(not torch.equal(v, model.student.state_dict()[k]) for k, v in student_before.items())


@pytest.mark.parametrize(
    ("source", "pool_size", "expected"),
    [
        ("kegnet", 40, (Pool, KegnetGenerators, 80)),
        ("kegnet", None, (KegnetGenerators,)),
        ("uniform", 20, (Pool, UniformNoise, 40)),
    ],
)
def test_shorthands_build_the_papers_sources(generator_ckpt, source, pool_size, expected):
    model = StudentModule(generators=generator_ckpt, source=source, pool_size=pool_size)
    assert isinstance(model.source, expected[0])
    if isinstance(model.source, Pool):
        assert isinstance(model.source.source, expected[1]) and model.source.size == expected[2]


PAPER = {"background": -0.4242, "ink": 2.8215}


def test_strokes_shorthand_and_share_build_strokes_with_the_given_ink(tmp_path, generator_ckpt):
    alone = StudentModule(generators=generator_ckpt, source="strokes", strokes=PAPER, pool_size=None)
    assert isinstance(alone.source, Strokes) and (alone.source.background, alone.source.ink) == (-0.4242, 2.8215)
    model = StudentModule(
        generators=generator_ckpt, pool_size=None, noise_fraction=0.375, strokes_fraction=0.25, strokes=PAPER, lr=1e-2
    )
    assert [type(s) for s in model.source.sources] == [KegnetGenerators, UniformNoise, Strokes]
    assert model.source.fractions == [0.375, 0.375, 0.25] and model.source.counts(8) == [3, 3, 2]
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(model, NoiseDataModule(batch_size=8, batches_per_epoch=2))
    trainer.save_checkpoint(tmp_path / "strokes.ckpt")
    restored = StudentModule.load_from_checkpoint(tmp_path / "strokes.ckpt")
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(restored.source.sample(8, g1), model.source.sample(8, g2))
    assert StudentModule(generators=generator_ckpt, pool_size=None, strokes_fraction=0.5, strokes=PAPER).source.counts(
        4
    ) == [2, 2]  # no noise share: generators and strokes only


def test_no_generators_gives_the_generators_share_to_uniform_noise(generator_ckpt):
    """The control of the KegNet mixture: its noise and strokes, U(-1, 1) where the generators' samples were."""
    shares = {"noise_fraction": 0.375, "strokes_fraction": 0.25, "strokes": PAPER, "pool_size": None}
    model = StudentModule(generators=generator_ckpt, source="no-generators", **shares)
    assert [type(s) for s in model.source.sources] == [UniformNoise, Strokes]
    assert model.source.fractions == [0.75, 0.25] and model.source.counts(8) == [6, 2]
    assert not any(isinstance(m, KegnetGenerators) for m in model.modules())  # nothing of the generators is used
    plain = StudentModule(teacher=TEACHER, source="no-generators", noise_fraction=0.5, pool_size=None)
    assert isinstance(plain.source, UniformNoise)  # without strokes, all of it is noise: the uniform baseline
    pooled = StudentModule(generators=generator_ckpt, source="no-generators", pool_size=4)
    assert isinstance(pooled.source, Pool) and pooled.source.size == 4 * 2  # as many samples as KegNet's pool


def test_strokes_refuse_a_missing_ink_or_shares_that_leave_no_generator_samples(generator_ckpt):
    with pytest.raises(ConfigError, match="blank paper and full ink"):
        StudentModule(generators=generator_ckpt, source="strokes")
    with pytest.raises(ConfigError, match="strokes_fraction"):
        StudentModule(generators=generator_ckpt, noise_fraction=0.5, strokes_fraction=0.5, strokes=PAPER)
    with pytest.raises(ConfigError, match="does not take"):
        StudentModule(generators=generator_ckpt, source="strokes", strokes={"colour": 1})


def test_noise_fraction_mixes_uniform_noise_into_the_generators_batches(tmp_path, generator_ckpt):
    model = StudentModule(generators=generator_ckpt, pool_size=None, noise_fraction=0.5, lr=1e-2)
    assert isinstance(model.source, Mixture) and model.source.fractions == [0.5, 0.5]
    assert [type(s) for s in model.source.sources] == [KegnetGenerators, UniformNoise]
    trainer = quiet_trainer(tmp_path, max_steps=2)
    trainer.fit(model, NoiseDataModule(batch_size=8, batches_per_epoch=2))
    trainer.save_checkpoint(tmp_path / "mixed.ckpt")
    restored = StudentModule.load_from_checkpoint(tmp_path / "mixed.ckpt")
    assert isinstance(restored.source, Mixture)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(restored.source.sample(8, g1), model.source.sample(8, g2))
    with pytest.raises(ConfigError, match="noise_fraction"):
        StudentModule(generators=generator_ckpt, noise_fraction=1.0)


def test_a_source_object_is_used_as_given(generator_ckpt):
    source = Pool(NormalNoise(), size=50, seed=3)
    model = StudentModule(generators=generator_ckpt, source=source)
    assert model.source is source and source.input_shape == (1, 32, 32)
    assert model.hparams.source_spec["init_args"]["size"] == 50


def test_source_by_class_path_in_yaml_trains_and_resumes_from_its_spec(tmp_path, generator_ckpt, capsys):
    """A Pool of KegnetGenerators given by class_path: the checkpoint alone rebuilds it, with its generators. The
    pool is drawn before the first step, saying what and how long."""
    source = {
        "class_path": "Pool",
        "init_args": {
            "size": 48,
            "source": {"class_path": "KegnetGenerators", "init_args": {"checkpoint": generator_ckpt}},
        },
    }
    config = student_config(tmp_path, generator_ckpt, source=source)
    main(["fit", "--config", str(config)])
    out = capsys.readouterr().out
    assert "StudentModule: drawing a fixed pool of 48 samples from 2 KegNet generators ...\n" in out
    assert re.search(r"StudentModule: pool of 48 samples drawn in \d+\.\d s\n", out)
    assert out.index("drawing a fixed pool") < out.index("pool of 48 samples drawn") < out.index("kegnet fit done")
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    spec = checkpoint["hyper_parameters"]["source_spec"]
    assert spec["class_path"].endswith("Pool") and spec["init_args"]["source"]["class_path"].endswith(
        "KegnetGenerators"
    )
    assert any(key.startswith("source.source.generators.1.") for key in checkpoint["state_dict"])
    loaded = StudentModule.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    generators = KegnetGenerators(generator_ckpt)
    for a, b in zip(loaded.source.source.generators, generators.generators, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_the_pool_message_says_what_the_pool_is_drawn_from(generator_ckpt):
    assert describe(KegnetGenerators(generator_ckpt, use_generators=[1])) == "1 KegNet generator"
    mixture = Mixture([KegnetGenerators(generator_ckpt), UniformNoise()], [0.5, 0.5])
    assert describe(mixture) == "a mixture of 2 KegNet generators and UniformNoise"


def test_resume_matches_an_uninterrupted_run(tmp_path, generator_ckpt):
    main(["fit", "--config", str(student_config(tmp_path / "straight", generator_ckpt))])
    config = student_config(tmp_path / "split", generator_ckpt)
    main(["fit", "--config", str(config), "--trainer.max_epochs", "1"])
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    a = torch.load(tmp_path / "straight" / "ckpt" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "split" / "ckpt" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key


def test_checkpoint_alone_rebuilds_the_student(tmp_path, generator_ckpt):
    import shutil

    generators = tmp_path / "g.ckpt"
    shutil.copy(generator_ckpt, generators)
    model = StudentModule(generators=str(generators), student="lenet5-s2")
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, NoiseDataModule(batch_size=8, batches_per_epoch=1))
    trainer.save_checkpoint(tmp_path / "student.ckpt")
    generators.unlink()
    loaded = StudentModule.load_from_checkpoint(tmp_path / "student.ckpt", weights_only=True).eval()
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))
    assert loaded.hparams.student_ranks == model.hparams.student_ranks


def test_real_data_accuracy_and_agreement_are_logged(tmp_path, generator_ckpt):
    from kegnet_pl.data import MNISTSubsetDataModule

    model = StudentModule(generators=generator_ckpt)
    data = NoiseDataModule(
        batch_size=8, batches_per_epoch=1, val_batches=2, eval_data=MNISTSubsetDataModule(batch_size=250)
    )
    results = quiet_trainer(tmp_path, limit_test_batches=2).test(model, data, verbose=False)
    merged = {k: v for r in results for k, v in r.items()}
    assert 0.5 < merged["test/acc"] <= 1 and 0.5 < merged["test/teacher_acc"] <= 1
    assert 0 <= merged["test/agreement"] <= 1


def test_fidelity_to_the_teacher_on_real_test_data(tmp_path, generator_ckpt):
    """test/real_agreement and test/real_kl equal the figures computed by hand on the same 500 real images."""
    from kegnet_pl.data import MNISTSubsetDataModule

    model = StudentModule(generators=generator_ckpt, student="lenet5-s3")
    real = MNISTSubsetDataModule(batch_size=250)
    data = NoiseDataModule(batch_size=8, batches_per_epoch=1, val_batches=1, eval_data=real)
    results = quiet_trainer(tmp_path, limit_test_batches=2).test(model, data, verbose=False)
    merged = {k: v for r in results for k, v in r.items()}
    real.setup("test")
    x = torch.cat([x for x, _ in list(real.test_dataloader())[:2]])
    with torch.no_grad():
        teacher, student = model.teacher(x), model(x)
    agreement = (teacher.argmax(-1) == student.argmax(-1)).float().mean().item()
    kl = F.kl_div(student.log_softmax(-1), teacher.log_softmax(-1), reduction="batchmean", log_target=True).item()
    assert len(x) == 500 and agreement < 1 and kl > 1e-3  # student 3 is far enough from the teacher to tell
    assert merged["test/real_agreement"] == pytest.approx(agreement, abs=1e-6)
    assert merged["test/real_kl"] == pytest.approx(kl, rel=1e-4)


def test_a_teacher_file_is_not_a_generator_checkpoint():
    with pytest.raises(CheckpointError, match="is not a GeneratorModule checkpoint"):
        StudentModule(generators=TEACHER)


def test_bad_settings(generator_ckpt):
    with pytest.raises(ConfigError, match="'kegnet', 'uniform', 'normal', 'strokes' or 'no-generators', got 'gauss'"):
        StudentModule(generators=generator_ckpt, source="gauss")
    with pytest.raises(ConfigError, match="use_generators=\\[5\\] must name generators 0..1"):
        StudentModule(generators=generator_ckpt, use_generators=[5])
    with pytest.raises(ConfigError, match="'conv9'"):
        StudentModule(generators=generator_ckpt, student={"conv9": 3})
    with pytest.raises(ConfigError, match="lr must be positive, got 0"):
        StudentModule(generators=generator_ckpt, lr=0)
    with pytest.raises(ConfigError, match=r"needs generators: give generators= a generator checkpoint \(model\."):
        StudentModule()
    with pytest.raises(ConfigError, match=r"needs a teacher: give generators= .* or teacher= the teacher's weights"):
        StudentModule(source="uniform")


def test_shipped_student_config_parses(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(ROOT / "configs/mnist_subset/student.yaml"), "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["student"] == "lenet5-s1"
    assert config["data"]["init_args"]["eval_data"]["class_path"].endswith("MNISTSubsetDataModule")


def test_a_checkpoint_of_the_earlier_format_still_loads(tmp_path, generator_ckpt):
    """Earlier student checkpoints named the shorthand source and held the generators at ``generators.*``."""
    model = StudentModule(generators=generator_ckpt, pool_size=20)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, NoiseDataModule(batch_size=8, batches_per_epoch=1))
    trainer.save_checkpoint(tmp_path / "new.ckpt")
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    del hparams["source_spec"]
    hparams.update(source="kegnet", generator_spec={"n_generators": 2, "noise_dim": 10})
    prefix = "source.source.generators."
    checkpoint["state_dict"] = {
        ("generators." + key[len(prefix) :] if key.startswith(prefix) else key): value
        for key, value in checkpoint["state_dict"].items()
    }
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = StudentModule.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True).eval()
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))
    assert isinstance(loaded.source, Pool) and loaded.source.size == 40
    for key, value in model.source.state_dict().items():
        assert torch.equal(loaded.source.state_dict()[key], value), key


def test_a_registered_classifier_is_a_student_trained_from_scratch(tmp_path, generator_ckpt):
    """lenet5-half, the DAFL/DFAD student: 15,738 parameters, 3.92x smaller than LeNet5, seeded initialisation."""
    model = StudentModule(generators=generator_ckpt, student="lenet5-half", seed=1)
    assert sum(p.numel() for p in model.student.parameters()) == 15_738
    assert model.compression_ratio == pytest.approx(61_706 / 15_738) and model.hparams.student_ranks is None
    again = StudentModule(generators=generator_ckpt, student="lenet5-half", seed=1)
    assert torch.equal(model.student.conv3.weight, again.student.conv3.weight)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, NoiseDataModule(batch_size=8, batches_per_epoch=1))
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    loaded = StudentModule.load_from_checkpoint(tmp_path / "half.ckpt", weights_only=True).eval()
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))


def test_cosine_schedule_ends_the_run_at_learning_rate_zero(tmp_path, generator_ckpt):
    model = StudentModule(generators=generator_ckpt, student="lenet5-s1", pool_size=None, lr=1e-3, lr_schedule="cosine")
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(model, NoiseDataModule(batch_size=8, batches_per_epoch=3))
    assert trainer.global_step == 6
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ConfigError, match="lr_schedule must be 'constant' or 'cosine', got 'step'"):
        StudentModule(generators=generator_ckpt, lr_schedule="step")


def test_a_teacher_file_without_its_architecture_takes_the_teacher_options(tmp_path):
    bare = tmp_path / "weights.pt"
    torch.save(StudentModule(teacher=TEACHER, source="uniform", pool_size=4).teacher.net.state_dict(), bare)
    with pytest.raises(CheckpointError, match="teacher_arch lenet5"):
        StudentModule(teacher=str(bare), source="uniform", pool_size=4)
    model = StudentModule(
        teacher=str(bare), teacher_arch="lenet5", input_shape=[1, 32, 32], num_classes=10, source="uniform", pool_size=4
    )
    assert model.num_classes == 10 and model.input_shape == (1, 32, 32)


def test_reading_a_student_back_skips_the_decomposition_its_weights_replace(tiny_checkpoints, monkeypatch):
    from kegnet_pl.compression import tucker

    path = tiny_checkpoints["student"]
    expected = StudentModule.load_from_checkpoint(path, strict=False).eval()  # decomposed, then loaded over
    calls = []
    real = tucker.partial_tucker
    monkeypatch.setattr(tucker, "partial_tucker", lambda *a, **k: calls.append(1) or real(*a, **k))
    loaded = StudentModule.load_from_checkpoint(path).eval()  # strict: every weight comes from the file
    assert calls == []
    x = torch.randn(3, 1, 32, 32)
    assert torch.equal(loaded(x), expected(x))
    StudentModule.load_from_checkpoint(path, strict=False)  # not every weight need come: decompose as before
    assert calls
    model = StudentModule(generators=str(tiny_checkpoints["generator"]), student={"fc2": [4, 4]}, pool_size=8)
    assert model.student.fc2.core.weight.abs().sum() > 0  # outside reading a checkpoint, layers are decomposed
