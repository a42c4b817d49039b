"""StudentModule's adversary: a share of every batch from DFAD's generator trained against the student."""

import pytest
import torch
from conftest import ROOT, quiet_trainer, tiny_config
from pytorch_lightning import Trainer

from kegnet_pl.cli import main
from kegnet_pl.data import NoiseDataModule
from kegnet_pl.data.noise import batch_generator
from kegnet_pl.data.sources import DFADGenerator, KegnetGenerators, Mixture, Strokes, UniformNoise, build_source
from kegnet_pl.errors import ConfigError
from kegnet_pl.losses import dfad_discrepancy, distillation_loss
from kegnet_pl.modules import StudentModule

PAPER = {"background": -0.4242, "ink": 2.8215}
SHARES = {"noise_fraction": 0.25, "strokes_fraction": 0.25, "strokes": PAPER, "pool_size": None}


def test_the_adversary_takes_the_last_share_of_the_kegnet_and_no_generators_batches(generator_ckpt):
    model = StudentModule(generators=generator_ckpt, adversary_fraction=0.25, adversary_width=8, **SHARES)
    assert [type(s) for s in model.source.sources] == [KegnetGenerators, UniformNoise, Strokes, DFADGenerator]
    assert model.source.fractions == [0.25, 0.25, 0.25, 0.25] and model.source.counts(8) == [2, 2, 2, 2]
    assert model.adversary is model.source.sources[3] and model.adversary.width == 8
    control = StudentModule(generators=generator_ckpt, source="no-generators", adversary_fraction=0.25, **SHARES)
    assert [type(s) for s in control.source.sources] == [UniformNoise, Strokes, DFADGenerator]
    assert control.source.fractions == [0.5, 0.25, 0.25]
    baseline = StudentModule(generators=generator_ckpt, source="uniform", adversary_fraction=0.25, **SHARES)
    assert isinstance(baseline.source, UniformNoise) and baseline.adversary is None  # a baseline's batch is its own
    own = {"generators": generator_ckpt, "adversary_fraction": 0.25, "pool_size": None}
    last = StudentModule(source=Mixture([UniformNoise(), DFADGenerator(width=8)]), **own)
    assert last.adversary is last.source.sources[1]  # a mixture of your own: its last source, if DFAD's generator
    first = StudentModule(source=Mixture([DFADGenerator(width=8), UniformNoise()]), **own)
    assert first.adversary is None


def test_bad_adversary_settings_say_what_to_change(generator_ckpt):
    with pytest.raises(ConfigError, match="set pool_size: null"):
        StudentModule(generators=generator_ckpt, adversary_fraction=0.25, pool_size=64)
    with pytest.raises(ConfigError, match="adversary_fraction must be in"):
        StudentModule(generators=generator_ckpt, adversary_fraction=0.5, noise_fraction=0.5, pool_size=None)
    with pytest.raises(ConfigError, match="adversary_every and adversary_lr must be positive"):
        StudentModule(generators=generator_ckpt, adversary_fraction=0.25, adversary_every=0, pool_size=None)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("loss", ["kl", "l1"])
def test_each_loss_reaches_only_its_own_network(generator_ckpt, loss):
    """One backward pass: the student's gradient is that of its loss (the KL divergence, or the L1 gap with
    ``loss: l1``) on the mixture's batch, the adversary's that of minus the L1 gap on its own batch, drawn first
    from the batch's seed."""
    torch.manual_seed(0)
    model = StudentModule(generators=generator_ckpt, adversary_fraction=0.25, adversary_width=8, loss=loss, **SHARES)
    batch = {"size": torch.tensor(8), "seed": torch.tensor(1234)}
    model._adversarial_step(batch).backward()  # step 0: the adversary's turn
    student, adversary = list(model.student.parameters()), list(model.adversary.parameters())
    got_student, got_adversary = [p.grad.clone() for p in student], [p.grad.clone() for p in adversary]

    draws = batch_generator(batch)
    x_adv = model.adversary.sample(2, draws)
    x = model.source.sample(8, draws).detach()
    kd = (distillation_loss if loss == "kl" else dfad_discrepancy)(model.student(x), model.teacher(x))
    gap = dfad_discrepancy(model.student(x_adv), model.teacher(x_adv))
    want_student = torch.autograd.grad(kd, student)
    want_adversary = torch.autograd.grad(-gap, adversary)
    for got, want in zip(got_student + got_adversary, list(want_student) + list(want_adversary), strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    assert any(w.abs().sum() > 0 for w in want_adversary)
    assert all(p.grad is None for p in model.teacher.parameters())


def test_fit_trains_the_adversary_at_its_own_constant_rate(tmp_path, generator_ckpt):
    model = StudentModule(
        generators=generator_ckpt,
        adversary_fraction=0.25,
        adversary_width=8,
        adversary_every=2,
        adversary_lr=1e-2,
        lr=1e-3,
        lr_schedule="cosine",
        **SHARES,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(model, NoiseDataModule(batch_size=8, batches_per_epoch=3))
    assert trainer.global_step == 6  # one optimiser step per batch, the adversary's beside it
    (student_group,) = trainer.optimizers[0].param_groups
    assert student_group["lr"] == pytest.approx(0.0, abs=1e-12)  # the student's schedule ran out
    assert {id(p) for p in student_group["params"]} == {id(p) for p in model.student.parameters()}
    (adversary_group,) = model.adversary_optimizer.param_groups  # its own Adam, at a constant rate
    assert isinstance(model.adversary_optimizer, torch.optim.Adam)
    assert adversary_group["lr"] == 1e-2 and adversary_group["weight_decay"] == 0.0
    assert model.adversary_optimizer.state[adversary_group["params"][0]]["step"] == 3  # steps 0, 2, 4 of 6
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("student.") for k in changed)
    assert any(".sources.3.net.fc.weight" in k for k in changed)  # the adversary learnt
    assert not any(k.startswith("teacher.") or ".sources.0." in k for k in changed)  # teacher, KegNet generators


def test_an_sgd_student_keeps_the_adversarys_adam_and_can_learn_dfads_loss(tmp_path, generator_ckpt):
    """DFAD's recipe inside KegNet's batches: the student on SGD and the L1 gap, the adversary on Adam."""
    model = StudentModule(
        generators=generator_ckpt, adversary_fraction=0.25, adversary_width=8, optimizer="sgd", loss="l1", **SHARES
    )
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, NoiseDataModule(batch_size=8, batches_per_epoch=2))
    assert isinstance(trainer.optimizers[0], torch.optim.SGD)
    assert isinstance(model.adversary_optimizer, torch.optim.Adam)
    assert all("exp_avg" in state for state in model.adversary_optimizer.state.values())
    assert all("momentum_buffer" in trainer.optimizers[0].state[p] for p in model.student.parameters())
    with pytest.raises(ConfigError, match="loss must be 'kl'"):
        StudentModule(generators=generator_ckpt, loss="mse")


@pytest.mark.parametrize(("recipe", "hinted"), [({}, True), ({"loss": "l1", "optimizer": "sgd"}, False)])
def test_a_student_from_scratch_beside_an_adversary_is_pointed_to_dfads_recipe(
    tmp_path, generator_ckpt, capsys, recipe, hinted
):
    model = StudentModule(
        generators=generator_ckpt, student="lenet5-half", adversary_fraction=0.25, adversary_width=8, **recipe, **SHARES
    )
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, NoiseDataModule(batch_size=8, batches_per_epoch=1))
    assert ("lenet5-half is trained from scratch beside an adversary" in capsys.readouterr().out) == hinted


def adversary_config(folder, generators, batches_per_epoch=3):
    model = {"generators": generators, "adversary_fraction": 0.25, "adversary_width": 8, "adversary_every": 2}
    return tiny_config(
        folder,
        "student",
        model={"class_path": "StudentModule", "init_args": {**model, **SHARES}},
        data={"class_path": "NoiseDataModule", "init_args": {"batch_size": 8, "batches_per_epoch": batches_per_epoch}},
        **{"trainer.max_epochs": 2, "trainer.limit_val_batches": 0},
    )


def test_resume_and_checkpoint_rebuild_the_adversary(tmp_path, generator_ckpt):
    main(["fit", "--config", str(adversary_config(tmp_path / "straight", generator_ckpt))])
    split = adversary_config(tmp_path / "split", generator_ckpt)
    main(["fit", "--config", str(split), "--trainer.max_epochs", "1"])
    main(["fit", "--config", str(split), "--ckpt_path", "last"])
    a = torch.load(tmp_path / "straight" / "ckpt" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "split" / "ckpt" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    restored = StudentModule.load_from_checkpoint(tmp_path / "straight" / "ckpt" / "last.ckpt", weights_only=True)
    assert isinstance(restored.adversary, DFADGenerator) and restored.adversary.width == 8
    weight = "source.sources.3.net.fc.weight"
    assert torch.equal(restored.state_dict()[weight], a["state_dict"][weight])


def test_a_run_of_an_earlier_version_resumes_with_the_adversarys_group_split_off(tmp_path, generator_ckpt):
    """Earlier versions kept the adversary as a second parameter group of the student's Adam: resuming such a
    checkpoint moves that group's state to the adversary's own Adam, and the run ends as an uninterrupted one."""
    main(["fit", "--config", str(adversary_config(tmp_path / "straight", generator_ckpt))])
    old = adversary_config(tmp_path / "old", generator_ckpt)
    main(["fit", "--config", str(old), "--trainer.max_epochs", "1"])
    last = tmp_path / "old" / "ckpt" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    adversary = checkpoint.pop("adversary_optimizer")  # written as an earlier version did: one optimiser, two groups
    (student,) = checkpoint["optimizer_states"][0]["param_groups"]
    shift = len(student["params"])
    group = {**adversary["param_groups"][0], "params": [shift + i for i in adversary["param_groups"][0]["params"]]}
    checkpoint["optimizer_states"][0]["param_groups"].append(group)
    checkpoint["optimizer_states"][0]["state"].update({shift + i: v for i, v in adversary["state"].items()})
    torch.save(checkpoint, last)
    main(["fit", "--config", str(old), "--ckpt_path", "last"])
    a = torch.load(tmp_path / "straight" / "ckpt" / "last.ckpt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert b["global_step"] == 6 and len(b["optimizer_states"][0]["param_groups"]) == 1
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key


def test_two_cpu_processes_with_ddp_train_student_and_adversary(tmp_path, generator_ckpt):
    """With the strategy that finds unused parameters: the adversary sits out every other step here."""
    config = adversary_config(tmp_path, generator_ckpt, batches_per_epoch=4)
    strategy = ["--trainer.strategy", "ddp_spawn_find_unused_parameters_true", "--trainer.max_epochs", "1"]
    main(["fit", "--config", str(config), "--config", str(ROOT / "configs/trainer/ddp_cpu2.yaml"), *strategy])
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2  # 4 batches over 2 ranks: two steps each, the adversary's turn in the first
    start = StudentModule(generators=generator_ckpt, adversary_fraction=0.25, adversary_width=8, **SHARES).state_dict()
    for key in ("source.sources.3.net.fc.weight", "student.fc2.weight"):
        assert not torch.equal(start[key], checkpoint["state_dict"][key]), key


def test_plain_ddp_is_refused_with_the_strategy_that_works(generator_ckpt):
    model = StudentModule(generators=generator_ckpt, adversary_fraction=0.25, adversary_width=8, **SHARES)
    model.trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    with pytest.raises(ConfigError, match="ddp_find_unused_parameters_true"):
        model.setup("fit")
    finds = "ddp_spawn_find_unused_parameters_true"
    model.trainer = Trainer(accelerator="cpu", devices=2, strategy=finds, logger=False)
    model.setup("fit")


def test_a_checkpoint_that_names_the_earlier_home_of_dfads_generator_still_builds():
    source = build_source({"class_path": "kegnet_pl.modules.dfad.DFADGenerator", "init_args": {"width": 8}})
    assert isinstance(source, DFADGenerator) and source.width == 8
