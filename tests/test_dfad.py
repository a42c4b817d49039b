"""DFAD: its loss against the paper's formula, its settings against its authors' MNIST script, which network each
loss reaches, the networks' modes while it trains, its trainable generator source, a fit through kegnet, and resume."""

import pytest
import torch
import yaml
from conftest import ROOT, TEACHER, module_checkpoint, tiny_config, training_modes

from kegnet_pl import export
from kegnet_pl.cli import main
from kegnet_pl.data import NoiseDataModule
from kegnet_pl.data.sources import build_source
from kegnet_pl.errors import CheckpointError
from kegnet_pl.modules import StudentModule
from kegnet_pl.modules.dfad import DFADGenerator, DFADModule, dfad_discrepancy


def dfad_config(tmp_path, **model_args):
    init_args = {"teacher": TEACHER, "noise_dim": 8, "generator_width": 8, "student_steps": 2, **model_args}
    return tiny_config(
        tmp_path,
        "dfad",
        model={"class_path": "kegnet_pl.modules.dfad.DFADModule", "init_args": init_args},
        data={
            "class_path": "NoiseDataModule",
            "init_args": {"batch_size": 8, "batches_per_epoch": 2, "val_batches": 1},
        },
        **{"trainer.max_epochs": 2},
    )


def test_discrepancy_is_the_mean_absolute_logit_gap():
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    naive = sum(abs(s[b, k] - t[b, k]) for b in range(6) for k in range(10)) / 60
    assert torch.allclose(dfad_discrepancy(s, t), naive, atol=1e-6)
    assert dfad_discrepancy(t, t) == 0


#: DFAD_mnist.py's defaults (VainF/Data-Free-Adversarial-Distillation), the protocol of its MNIST result
AUTHORS_MNIST = {"noise_dim": 100, "student_steps": 5, "lr": 0.01, "lr_generator": 1e-3, "weight_decay": 1e-4}


def test_defaults_and_configs_are_the_authors_mnist_script():
    model = DFADModule(teacher=TEACHER)
    assert {key: model.hparams[key] for key in AUTHORS_MNIST} == AUTHORS_MNIST
    assert model.source.net.fc.in_features == 100 and model.source.net.fc.out_features == 128 * 8 * 8  # nz, ngf 64
    student_opt, generator_opt = model.configure_optimizers()
    assert isinstance(student_opt, torch.optim.SGD) and isinstance(generator_opt, torch.optim.Adam)
    assert {key: student_opt.defaults[key] for key in ("lr", "momentum", "weight_decay")} == {
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 1e-4,
    }
    assert generator_opt.defaults["lr"] == 1e-3 and generator_opt.defaults["weight_decay"] == 0
    for name in ("mnist", "mnist_subset"):
        config = yaml.safe_load((ROOT / "configs" / name / "dfad.yaml").read_text())
        init_args = config["model"]["init_args"]
        assert {key: init_args[key] for key in AUTHORS_MNIST} == AUTHORS_MNIST, name
        assert config["data"]["init_args"]["batch_size"] == 512, name
    mnist = yaml.safe_load((ROOT / "configs/mnist/dfad.yaml").read_text())
    assert mnist["trainer"]["max_epochs"] == 40 and mnist["data"]["init_args"]["batches_per_epoch"] == 50


def test_student_loss_reaches_the_student_only_and_generator_loss_both_logits():
    model = DFADModule(teacher=TEACHER, noise_dim=8, generator_width=8)
    x = model.source.sample(6, torch.Generator().manual_seed(0)).detach().requires_grad_()
    model.student_loss(x).backward()
    assert x.grad is None and all(p.grad is not None for p in model.student.parameters())
    assert not any(p.grad is not None for p in model.source.parameters())
    (through_both,) = torch.autograd.grad(model.generator_loss(x), x)
    (student_side,) = torch.autograd.grad(-dfad_discrepancy(model.student(x), model.teacher(x).detach()), x)
    assert not torch.allclose(through_both, student_side)  # the teacher's logits are not detached
    assert all(p.grad is None for p in model.teacher.parameters())


def test_teacher_evaluates_and_generator_and_student_train_in_every_step():
    """As its authors' train(): teacher.eval(), student.train(), generator.train() (batch statistics), for the
    student's steps (no graph to the generator) and the generator's (a graph through teacher and student)."""
    model = DFADModule(teacher=TEACHER, noise_dim=8, generator_width=8, student_steps=2)
    data = NoiseDataModule(batch_size=4, batches_per_epoch=2, val_batches=1)
    calls = training_modes(model, data, teacher=model.teacher.net, generator=model.source.net, student=model.student)
    assert calls["teacher"] == {(False, False), (False, True)}  # eval; no graph in the student's steps
    assert calls["generator"] == {(True, False), (True, True)}  # train mode, a graph in its own step only
    assert {mode for mode, _ in calls["student"]} == {True}


def test_generator_is_a_trainable_source_rebuilt_from_its_spec():
    source = DFADGenerator(noise_dim=16, width=8)
    source.bind((1, 32, 32), 10, seed=1)
    x = source.sample(4, torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 32, 32) and source.trainable and x.requires_grad
    rebuilt = build_source(source.spec())
    rebuilt.bind((1, 32, 32), 10, seed=1)
    pairs = zip(source.parameters(), rebuilt.parameters(), strict=True)  # the same initialisation from the seed
    assert all(torch.equal(a, b) for a, b in pairs)


def test_generator_samples_on_batch_statistics_in_eval_mode_too():
    """Validation and image grids draw in eval mode: the samples must be the ones the student trains on."""
    source = DFADGenerator(noise_dim=16, width=8)
    source.bind((1, 32, 32), 10, seed=1)
    with torch.no_grad():
        trained = source.train().sample(8, torch.Generator().manual_seed(0))  # one update of the running statistics
        state = {key: value.clone() for key, value in source.state_dict().items()}
        held_out = source.eval().sample(8, torch.Generator().manual_seed(0))
    assert torch.allclose(held_out, trained, atol=1e-6)
    assert abs(held_out.mean().item()) < 1e-4 and abs(held_out.std().item() - 1) < 0.01  # the last BatchNorm's scaling
    assert all(torch.equal(state[key], value) for key, value in source.state_dict().items())  # running stats kept
    assert not any(module.training for module in source.modules())


def test_a_checkpoint_loads_only_as_the_kind_of_stage_that_wrote_it(tmp_path, generator_ckpt):
    """A DFAD checkpoint read by StudentModule would train on, without its adversary, as plain distillation."""
    path = module_checkpoint(DFADModule(teacher=TEACHER, noise_dim=8, generator_width=8), tmp_path / "dfad.ckpt")
    with pytest.raises(CheckpointError, match=r"a DFADModule, not of a StudentModule; load it with DFADModule\.load_"):
        StudentModule.load_from_checkpoint(path)
    assert isinstance(DFADModule.load_from_checkpoint(path), DFADModule)
    assert type(export.network_of_checkpoint(path)[0]).__name__ == "LeNet5Half"  # loaded as the DFADModule it is
    with pytest.raises(CheckpointError, match=r"GeneratorModule, not of a StudentModule; to distil a student from its"):
        StudentModule.load_from_checkpoint(generator_ckpt)


def test_student_from_scratch_and_optimisers():
    model = DFADModule(teacher=TEACHER, noise_dim=8, generator_width=8)
    assert sum(p.numel() for p in model.student.parameters()) == 15_738  # LeNet-5-half
    student_opt, generator_opt = model.configure_optimizers()

    def ids(params):
        return {id(p) for p in params}

    assert ids(p for g in student_opt.param_groups for p in g["params"]) == ids(model.student.parameters())
    assert ids(p for g in generator_opt.param_groups for p in g["params"]) == ids(model.source.parameters())


def test_fit_trains_both_sides_and_resumes_to_the_same_weights(tmp_path):
    main(["fit", "--config", str(dfad_config(tmp_path / "straight"))])
    config = dfad_config(tmp_path / "split")
    main(["fit", "--config", str(config), "--trainer.max_epochs", "1"])
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    a = torch.load(tmp_path / "straight" / "ckpt" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "split" / "ckpt" / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] > 0  # saved as training ended
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    start = DFADModule(teacher=TEACHER, noise_dim=8, generator_width=8).state_dict()
    moved = [key for key in start if not torch.equal(start[key], a["state_dict"][key])]
    assert any(key.startswith("student.") for key in moved) and any(key.startswith("source.net.") for key in moved)
    assert not any(key.startswith("teacher.") for key in moved)
    loaded = DFADModule.load_from_checkpoint(tmp_path / "straight" / "ckpt" / "last.ckpt", weights_only=True)
    assert torch.equal(loaded.source.net.fc.weight, a["state_dict"]["source.net.fc.weight"])


def test_two_cpu_processes_with_ddp(tmp_path):
    """DDP needs the strategy that finds unused parameters: a student step does not use the generator's."""
    config = dfad_config(tmp_path)
    strategy = ["--trainer.strategy", "ddp_spawn_find_unused_parameters_true", "--trainer.max_epochs", "1"]
    main(["fit", "--config", str(config), "--config", str(ROOT / "configs/trainer/ddp_cpu2.yaml"), *strategy])
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 3  # 2 batches over 2 ranks: one batch each, 2 student steps + 1 generator step
