"""DAFL: its three generator losses against the paper's formulas, the teacher's features, which network each loss
moves, a fit through kegnet with TensorBoard logs and images, resume, and two CPU processes under DDP."""

import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import ROOT, quiet_trainer, tiny_config, training_modes
from torch import nn

from kegnet_pl.cli import main
from kegnet_pl.data import NoiseDataModule
from kegnet_pl.errors import ConfigError
from kegnet_pl.images import DrawsSamples, SampleImages
from kegnet_pl.loading import save_classifier
from kegnet_pl.modules.dafl import (
    DAFLModule,
    dafl_activation_loss,
    dafl_entropy_loss,
    dafl_onehot_loss,
    teacher_outputs,
)
from kegnet_pl.nets import build_classifier, classifier_names, trust_arch

SMALL = {"noise_dim": 8, "generator_width": 8}  # a generator of a few thousand parameters


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny LeNet-5-half teacher with seeded random weights, written as a kegnet_pl classifier file."""
    torch.manual_seed(0)
    net = build_classifier("lenet5-half", (1, 32, 32), 10)
    return str(save_classifier(net, tmp_path_factory.mktemp("teacher") / "teacher.ckpt", "lenet5-half"))


def dafl_config(tmp_path, teacher, **model_args):
    return tiny_config(
        tmp_path,
        "dafl",
        model={"class_path": "kegnet_pl.modules.dafl.DAFLModule", "init_args": {"teacher": teacher, **SMALL}},
        data={
            "class_path": "NoiseDataModule",
            "init_args": {"batch_size": 8, "batches_per_epoch": 2, "val_batches": 1},
        },
        **{"trainer.max_epochs": 2, **{f"model.init_args.{k}": v for k, v in model_args.items()}},
    )


# --- the losses, against the paper's formulas on hand-made tensors ---------------------------------------------
def test_onehot_loss_is_the_cross_entropy_against_the_teachers_own_argmax():
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    # row 0: argmax 0, -log(e^2 / (e^2 + 2)); row 1: argmax 2, -log(e^3 / (1 + e + e^3))
    expected = (-math.log(math.e**2 / (math.e**2 + 2)) - math.log(math.e**3 / (1 + math.e + math.e**3))) / 2
    assert dafl_onehot_loss(t).item() == pytest.approx(expected, rel=1e-6)
    assert dafl_onehot_loss(torch.tensor([[100.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)  # confident: 0


def test_activation_loss_is_the_negated_mean_absolute_feature():
    f = torch.tensor([[1.0, -2.0, 0.0, 3.0], [-1.0, 0.0, 0.5, 0.5]])
    l1_norms = [6.0, 2.0]  # ||f_b||_1
    assert dafl_activation_loss(f).item() == pytest.approx(-sum(l1_norms) / 2 / 4)  # -(1/n) sum ||f_b||_1 / d
    assert dafl_activation_loss(f).item() == pytest.approx(-f.abs().mean().item())  # their code's -|f|.mean()


def test_entropy_loss_is_the_negative_entropy_of_the_mean_prediction():
    t = torch.tensor([[math.log(3.0), 0.0, 0.0], [0.0, math.log(2.0), math.log(2.0)]])
    # softmax rows: (3/5, 1/5, 1/5) and (1/5, 2/5, 2/5); their mean p = (2/5, 3/10, 3/10)
    p = [0.4, 0.3, 0.3]
    nats = sum(pk * math.log(pk) for pk in p)
    assert dafl_entropy_loss(t, base=math.e).item() == pytest.approx(nats, rel=1e-6)
    assert dafl_entropy_loss(t).item() == pytest.approx(sum(pk * math.log10(pk) for pk in p), rel=1e-6)  # log10
    balanced = torch.eye(4) * 50  # one confident sample per class: p uniform, the least value -log K
    assert dafl_entropy_loss(balanced, base=math.e).item() == pytest.approx(-math.log(4), rel=1e-5)
    collapsed = torch.tensor([[0.0, 200.0, -200.0]] * 3)  # every sample in one class, a class at p = 0: no NaN
    value = dafl_entropy_loss(collapsed.requires_grad_())
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(collapsed.grad).all()


# --- the teacher's features ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", classifier_names())
def test_every_registered_classifier_gives_its_features(name):
    shape = {"mlp": (64,), "resnet14": (3, 32, 32)}.get(name, (1, 32, 32))
    net = build_classifier(name, shape, 10).eval()
    x = torch.randn(3, *shape)
    logits, features = teacher_outputs(net, x)
    assert torch.equal(logits, net(x)) and features.shape[0] == 3 and features.dim() == 2
    if name == "lenet5":
        assert features.shape[1] == 120  # conv3's output, what DAFL's LeNet5 returns as its feature


class NoFeatures(nn.Module):
    """A user's classifier without forward_features / forward_head."""

    def __init__(self, input_shape=(1, 32, 32), num_classes=10):
        super().__init__()
        self.input_shape, self.num_classes = tuple(input_shape), num_classes
        self.fc = nn.Linear(32 * 32, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_a_teacher_without_features_is_a_config_error(tmp_path):
    trust_arch("test_dafl:NoFeatures")
    path = save_classifier(NoFeatures(), tmp_path / "plain.ckpt", "test_dafl:NoFeatures")
    with pytest.raises(ConfigError, match="forward_features"):
        DAFLModule(teacher=str(path), **SMALL)


# --- the module ------------------------------------------------------------------------------------------------
def test_generator_is_dafls_and_optimisers_hold_one_network_each(teacher):
    model = DAFLModule(teacher=teacher)
    net = model.source.net
    assert net.fc.in_features == 100 and net.fc.out_features == 128 * 8 * 8  # z(100) -> 128 x 8 x 8
    assert [m.eps for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == [1e-5, 0.8, 0.8, 1e-5]
    assert not net.blocks[-1].affine  # tanh, then a BatchNorm without affine
    assert sum(p.numel() for p in model.student.parameters()) == 15_738  # LeNet-5-half
    student_opt, generator_opt = model.configure_optimizers()
    assert isinstance(student_opt, torch.optim.Adam) and isinstance(generator_opt, torch.optim.Adam)
    assert student_opt.defaults["lr"] == 2e-3 and generator_opt.defaults["lr"] == 0.2

    def ids(params):
        return {id(p) for p in params}

    assert ids(p for g in student_opt.param_groups for p in g["params"]) == ids(model.student.parameters())
    assert ids(p for g in generator_opt.param_groups for p in g["params"]) == ids(model.source.parameters())


#: DAFL-train.py's defaults (huawei-noah's DAFL), the protocol of its MNIST result
AUTHORS_MNIST = {
    "noise_dim": 100,
    "generator_bn_eps": 0.8,
    "onehot_weight": 1.0,
    "activation_weight": 0.1,
    "entropy_weight": 5.0,
    "lr": 2e-3,
    "lr_generator": 0.2,
}


def test_defaults_and_configs_are_the_authors_mnist_script(teacher):
    model = DAFLModule(teacher=teacher)
    assert {key: model.hparams[key] for key in AUTHORS_MNIST} == AUTHORS_MNIST
    student_opt, generator_opt = model.configure_optimizers()  # plain Adam each, no schedule (none on MNIST there)
    assert student_opt.defaults["weight_decay"] == generator_opt.defaults["weight_decay"] == 0
    for name in ("mnist", "mnist_subset"):
        config = yaml.safe_load((ROOT / "configs" / name / "dafl.yaml").read_text())
        init_args = config["model"]["init_args"]
        assert {key: init_args[key] for key in AUTHORS_MNIST} == AUTHORS_MNIST, name
        assert config["data"]["init_args"]["batch_size"] == 512 and "lr_schedule" not in init_args, name
    mnist = yaml.safe_load((ROOT / "configs/mnist/dafl.yaml").read_text())
    assert mnist["trainer"]["max_epochs"] == 200 and mnist["data"]["init_args"]["batches_per_epoch"] == 120


def test_student_loss_is_the_authors_kdloss(teacher):
    """``kl_div(log_softmax(s), softmax(t), sum) / batch``: the KL divergence from the teacher's softmax, at T = 1."""
    model = DAFLModule(teacher=teacher, **SMALL)
    x = torch.randn(5, 1, 32, 32)
    t = torch.randn(5, 10) * 3
    s, q = model.student(x), F.softmax(t, dim=1)
    naive = sum(q[b, k] * (q[b, k].log() - F.log_softmax(s, dim=1)[b, k]) for b in range(5) for k in range(10)) / 5
    assert model.student_loss(x, t).item() == pytest.approx(naive.item(), rel=1e-5)


def test_teacher_evaluates_and_generator_and_student_train_in_every_step(teacher):
    """As its authors' loop: teacher.eval(), net.train() each iteration, the generator never out of train mode."""
    model = DAFLModule(teacher=teacher, **SMALL)
    data = NoiseDataModule(batch_size=4, batches_per_epoch=2, val_batches=1)
    layer = model.teacher.net.fc2  # the teacher runs as forward_features and forward_head, not forward
    calls = training_modes(model, data, teacher=layer, generator=model.source.net, student=model.student)
    assert calls["teacher"] == {(False, True)}  # eval mode, with a graph back to the generator
    assert calls["generator"] == {(True, True)}  # batch statistics, trained
    assert {mode for mode, _ in calls["student"]} == {True}


def test_generator_loss_is_the_weighted_sum_of_its_parts(teacher):
    model = DAFLModule(teacher=teacher, onehot_weight=2.0, activation_weight=0.5, entropy_weight=3.0, **SMALL)
    x = model.source.sample(16, torch.Generator().manual_seed(0))
    loss, parts, logits = model.generator_loss(x)
    expected = 2 * parts["loss_onehot"] + 0.5 * parts["loss_activation"] + 3 * parts["loss_entropy"]
    assert torch.allclose(loss, expected)
    features = model.teacher.net.forward_features(x)
    assert torch.allclose(parts["loss_activation"], -features.abs().mean())
    assert torch.allclose(parts["loss_onehot"], F.cross_entropy(logits, logits.argmax(1)))


def test_generator_step_moves_only_the_generator_and_student_step_only_the_student(teacher):
    model = DAFLModule(teacher=teacher, **SMALL)
    student_opt, generator_opt = model.configure_optimizers()
    x = model.source.sample(16, torch.Generator().manual_seed(0))
    loss_generator, _, teacher_logits = model.generator_loss(x)

    def snapshot():
        return {name: value.detach().clone() for name, value in model.named_parameters()}

    def moved(before):
        return {name.split(".")[0] for name, value in model.named_parameters() if not torch.equal(value, before[name])}

    before = snapshot()
    loss_generator.backward()
    assert all(p.grad is None for p in model.student.parameters())
    generator_opt.step()
    assert moved(before) == {"source"}
    before = snapshot()
    model.student_loss(x, teacher_logits).backward()  # on the batch drawn before the generator step, detached
    assert all(p.grad is None for p in model.teacher.parameters())
    generator_grads = [p.grad.clone() for p in model.source.parameters()]
    student_opt.step()
    assert moved(before) == {"student"}
    assert all(torch.equal(a, p.grad) for a, p in zip(generator_grads, model.source.parameters(), strict=True))


def student_gradients_under_16_mixed(tmp_path, teacher, growth_interval):
    """The student's gradients as its optimiser steps, in one DAFL iteration under 16-mixed on the CPU."""
    from pytorch_lightning import Callback
    from pytorch_lightning.plugins.precision import MixedPrecision

    seen = []

    class Record(Callback):
        def on_train_start(self, trainer, module):
            student_opt = trainer.optimizers[0]
            student_opt.register_step_pre_hook(
                lambda *_: seen.append([p.grad.clone() for p in module.student.parameters()])
            )

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=growth_interval)
    trainer = quiet_trainer(tmp_path, plugins=[MixedPrecision("16-mixed", "cpu", scaler)], callbacks=[Record()])
    trainer.fit(DAFLModule(teacher=teacher, **SMALL), NoiseDataModule(batch_size=8, batches_per_epoch=1, val_batches=0))
    (grads,) = seen
    return grads, scaler.get_scale()


def test_under_16_mixed_the_student_is_unscaled_by_the_scale_its_own_gradients_had(tmp_path, teacher):
    """The precision plugin updates the loss scale after every optimiser step; a scale that grows after the
    generator's step (growth every step) must not shrink the student's gradients."""
    steady, _ = student_gradients_under_16_mixed(tmp_path, teacher, growth_interval=10_000)
    growing, scale = student_gradients_under_16_mixed(tmp_path, teacher, growth_interval=1)
    assert scale == 2.0**9  # one update for the iteration's two optimiser steps
    assert any(g.abs().sum() > 0 for g in steady)
    for a, b in zip(steady, growing, strict=True):
        assert torch.equal(a, b), (a.norm(), b.norm())  # the same scaled gradients, unscaled by the same scale


def test_grid_samples_fill_a_row_per_teacher_class(teacher):
    model = DAFLModule(teacher=teacher, **SMALL)
    assert isinstance(model, DrawsSamples)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    (grid,) = model.grid_samples(columns=3, seed=0)
    assert grid.shape == (30, 1, 32, 32)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BatchNorm statistics untouched
    assert model.source.net.training  # its mode restored
    assert len(SampleImages(columns=3).grids(model)) == 1


# --- through kegnet -----------------------------------------------------------------------------------------------
def test_fit_logs_trains_both_sides_and_resumes_to_the_same_weights(tmp_path, teacher):
    images = '--trainer.callbacks+={"class_path": "kegnet_pl.images.SampleImages", "init_args": {"every_n_epochs": 1}}'
    main(["fit", "--config", str(dafl_config(tmp_path / "straight", teacher)), images])
    config = dafl_config(tmp_path / "split", teacher)
    main(["fit", "--config", str(config), "--trainer.max_epochs", "1"])
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    a = torch.load(tmp_path / "straight" / "ckpt" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "split" / "ckpt" / "last.ckpt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 8  # 4 iterations, 2 steps each
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    start = DAFLModule(teacher=teacher, **SMALL).state_dict()
    moved = [key for key in start if not torch.equal(start[key], a["state_dict"][key])]
    assert any(key.startswith("student.") for key in moved) and any(key.startswith("source.net.") for key in moved)
    assert not any(key.startswith("teacher.") for key in moved)
    loaded = DAFLModule.load_from_checkpoint(tmp_path / "straight" / "ckpt" / "last.ckpt", weights_only=True)
    assert torch.equal(loaded.source.net.fc.weight, a["state_dict"]["source.net.fc.weight"])
    assert loaded.source.net.blocks[3].eps == 0.8  # rebuilt as DAFL's generator from the checkpoint alone

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (tmp_path / "straight" / "tb").rglob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events.parent)).Reload()
    tags = set(accumulator.Tags()["scalars"])
    for name in ("loss", "loss_generator", "loss_onehot", "loss_activation", "loss_entropy"):
        assert f"train/{name}_step" in tags and f"train/{name}_epoch" in tags, name
    assert "samples/gen0" in accumulator.Tags()["images"]
    assert (tmp_path / "straight" / "ckpt" / "samples_gen0.png").exists()


def test_two_cpu_processes_with_ddp(tmp_path, teacher):
    """Plain ddp_spawn works: every trainable parameter gets a gradient in the step's one backward pass."""
    config = dafl_config(tmp_path, teacher)
    ddp = ["--config", str(ROOT / "configs/trainer/ddp_cpu2.yaml"), "--trainer.max_epochs", "1"]
    main(["fit", "--config", str(config), *ddp])
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2  # 2 batches over 2 ranks: one iteration each, a generator and a student step
