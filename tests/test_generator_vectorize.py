"""Vectorised generator-decoder pairs (``GeneratorModule(vectorize=True)``, ``call_stacked``) against the loop."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TEACHER, quiet_trainer
from torch import nn

import kegnet_pl.modules.generator as generator_module
from kegnet_pl.data import NoiseDataModule
from kegnet_pl.errors import ConfigError
from kegnet_pl.loading import save_classifier
from kegnet_pl.modules import GeneratorModule
from kegnet_pl.nets import ResNet14
from kegnet_pl.nets.ensemble import call_pairs, call_stacked
from kegnet_pl.nets.generators import Decoder, ImageGenerator, TabularGenerator

#: float64 throughout: in float32 the batched kernels round differently from the loop's by up to 1e-4 in the
#: first layers' gradients (sums over a batch of standardised images), which would hide a real difference
TOL = {"rtol": 1e-5, "atol": 1e-5}
#: a small tabular teacher with dropout: in train mode its random draws must be the loop's too
MLP_SPEC = {"arch": "mlp", "input_shape": [12], "num_classes": 3, "arch_kwargs": {"units": 16, "n_layers": 2}}


def _nets(kind: str, count: int) -> tuple[list[nn.Module], list[torch.Tensor]]:
    """``count`` networks of one kind from different initialisations, and a stacked batch of 6 per network."""
    torch.manual_seed(0)
    y, z = torch.softmax(torch.randn(count, 6, 10), -1).double(), torch.randn(count, 6, 4).double()
    if kind == "image":
        return [ImageGenerator(10, 4, (2, 32, 32)).double() for _ in range(count)], [y, z]
    if kind == "tabular":
        return [TabularGenerator(10, 4, (7,), units=9).double() for _ in range(count)], [y, z]
    decoders = [Decoder((3, 5), 4, units=9, extra_layers=2).double() for _ in range(count)]
    return decoders, [torch.randn(count, 6, 3, 5, dtype=torch.float64)]


@pytest.mark.parametrize("kind", ["image", "tabular", "decoder"])
def test_call_stacked_gives_the_outputs_gradients_and_batchnorm_statistics_of_the_loop(kind):
    nets, inputs = _nets(kind, 3)
    looped = copy.deepcopy(nets)
    keys = [list(net.state_dict()) for net in nets]
    out = call_stacked(nets, *inputs)
    expected = torch.stack([net(*(x[g] for x in inputs)) for g, net in enumerate(looped)])
    torch.testing.assert_close(out, expected, **TOL)
    weights = torch.randn_like(out)  # a loss that weighs every output differently
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for net, reference, names in zip(nets, looped, keys, strict=True):
        assert list(net.state_dict()) == names  # the layout checkpoints rely on is unchanged
        for (name, p), q in zip(net.named_parameters(), reference.parameters(), strict=True):
            assert p.grad is not None, name
            torch.testing.assert_close(p.grad, q.grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")
        for (name, b), c in zip(net.named_buffers(), reference.buffers(), strict=True):
            # updated once, as a call of its own would have done
            torch.testing.assert_close(b, c, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    fresh = _nets(kind, 3)[0][0].state_dict()
    running = [key for key in fresh if key.endswith("running_mean")]
    assert running and not torch.equal(nets[0].state_dict()[running[0]], fresh[running[0]])  # the statistics moved


def test_call_stacked_in_eval_mode_leaves_buffers_alone_and_matches_the_loop():
    nets, inputs = _nets("image", 2)
    for net in nets:
        net.eval()
    before = [copy.deepcopy(net.state_dict()) for net in nets]
    out = call_stacked(nets, *inputs)
    torch.testing.assert_close(out, torch.stack([net(y, z) for net, y, z in zip(nets, *inputs, strict=True)]))
    for net, state in zip(nets, before, strict=True):
        assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


def test_call_stacked_refuses_what_one_call_cannot_stand_for():
    nets, inputs = _nets("tabular", 2)
    with pytest.raises(ConfigError, match="every input needs a leading dimension of 2"):
        call_stacked(nets, inputs[0][:1], inputs[1][:1])
    nets[1].eval()
    with pytest.raises(ConfigError, match="network 1 .* differs from network 0 .* train/eval mode"):
        call_stacked(nets, *inputs)
    other = TabularGenerator(10, 4, (7,), units=5).double()
    with pytest.raises(ConfigError, match="parameters or buffers of network 1 differ"):
        call_stacked([nets[0].eval(), other.eval()], *inputs)
    with pytest.raises(ConfigError, match="at least one network"):
        call_stacked([])


@pytest.mark.parametrize("per_batch", [False, True])
def test_call_pairs_gives_each_pair_its_samples_teacher_logits_and_decoded_noise(per_batch):
    generators, (y, z) = _nets("image", 3)
    torch.manual_seed(1)
    decoders = [Decoder((2, 32, 32), 4, units=9, extra_layers=1).double() for _ in range(3)]
    # a teacher with BatchNorm: in train mode its logits depend on which samples share its batch
    teacher = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.LazyLinear(10)).double()
    teacher(torch.zeros(2, 2, 32, 32, dtype=torch.float64))
    teacher.train(per_batch)
    x, logits, z_hat = call_pairs(generators, decoders, teacher, y, z, teacher_per_batch=per_batch)
    assert x.shape == (3, 6, 2, 32, 32) and logits.shape == (3, 6, 10) and z_hat.shape == (3, 6, 4)
    for g in range(3):
        torch.testing.assert_close(x[g], generators[g](y[g], z[g]), **TOL)
        torch.testing.assert_close(logits[g], teacher(x[g]), **TOL)
        torch.testing.assert_close(z_hat[g], decoders[g](x[g]), **TOL)


def _module(teacher: str | None, vectorize: bool, **kwargs) -> GeneratorModule:
    model = GeneratorModule(teacher=teacher, n_generators=3, beta=1.0, decoder_layers=2, vectorize=vectorize, **kwargs)
    return model.double()


def _batch(model: GeneratorModule, batch_size: int = 5) -> dict[str, torch.Tensor]:
    batch = NoiseDataModule(batch_size=batch_size, **model.noise_settings()).sample(epoch=0, rank=0, index=0)
    return {key: value.double() for key, value in batch.items()}


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)` but the `self.trainer` reference")
@pytest.mark.parametrize(
    "case",
    ["image", "image, teacher BatchNorm in train mode", "tabular", "tabular, teacher dropout in train mode"],
)
def test_vectorised_step_has_the_losses_gradients_and_statistics_of_the_loop(case, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(generator_module, "call_pairs", lambda *a: calls.append(1) or call_pairs(*a))
    batchnorm = "train" if "train mode" in case else "eval"
    if case.startswith("image"):  # ResNet14 holds BatchNorm: in train mode its statistics are per generator
        teacher, extra = str(save_classifier(ResNet14((1, 32, 32)), tmp_path / "t.ckpt", "resnet14")), {}
    else:
        teacher, extra = None, {"teacher_spec": MLP_SPEC}
    models = {v: _module(teacher, v, teacher_batchnorm=batchnorm, **extra) for v in (False, True)}
    models[True].load_state_dict(models[False].state_dict())  # the teacher of a spec is drawn at random
    batch = _batch(models[False])
    outputs, totals = {}, {}
    for vectorize, model in models.items():
        torch.manual_seed(1)  # the teacher's dropout (tabular, train mode) draws from here
        pairs = model.pair_outputs(batch["labels"], batch["noise"])
        outputs[vectorize] = [[tensor.detach() for tensor in pair] for pair in pairs]
        torch.manual_seed(2)
        totals[vectorize] = model.training_step(batch, 0)
        totals[vectorize].backward()
    assert len(calls) == 2  # in pair_outputs and in the step: the vmapped path ran
    torch.testing.assert_close(totals[True], totals[False], **TOL)
    for g, (pair, reference) in enumerate(zip(outputs[True], outputs[False], strict=True)):
        for name, a, b in zip(("samples", "logits", "decoded"), pair, reference, strict=True):
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, g=g, name=name: f"generator {g}, {name}: {m}")
    loop_params = dict(models[False].named_parameters())
    for name, p in models[True].named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, loop_params[name].grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    loop_state = models[False].state_dict()
    for name, value in models[True].state_dict().items():  # running statistics (updated twice), teacher unchanged
        torch.testing.assert_close(value, loop_state[name], **TOL, msg=lambda m, name=name: f"{name}: {m}")
    counter = "adjust" if "tabular" in case else "fc.1"  # a BatchNorm of the last generator
    assert loop_state[f"generators.2.{counter}.num_batches_tracked"] == 2


def test_fit_vectorised_ends_with_the_weights_of_the_loop(tmp_path, monkeypatch):
    """Three optimiser steps in float64: in float32 Adam would blow the rounding noise of gradients that are zero
    in exact arithmetic (a bias before BatchNorm) up to steps of about lr, different in the two runs."""
    calls = []
    monkeypatch.setattr(generator_module, "call_pairs", lambda *a: calls.append(1) or call_pairs(*a))
    states = []
    for vectorize in (False, True):
        model = GeneratorModule(teacher=TEACHER, n_generators=2, beta=1.0, vectorize=vectorize)
        data = NoiseDataModule(batch_size=8, batches_per_epoch=3, **model.noise_settings())
        quiet_trainer(tmp_path / str(vectorize), max_steps=3, precision="64-true").fit(model, data)
        states.append(model.state_dict())
        assert len(calls) == (3 if vectorize else 0)  # once in each of the 3 steps: the vmapped path ran
    assert any(k.startswith("generators.1.") for k in states[1])
    initial = GeneratorModule(teacher=TEACHER, n_generators=2).state_dict()
    assert not torch.equal(states[1]["generators.1.fc.0.weight"], initial["generators.1.fc.0.weight"].double())
    assert states[0].keys() == states[1].keys()
    for key, value in states[1].items():
        torch.testing.assert_close(value, states[0][key], rtol=1e-7, atol=1e-9, msg=lambda m, key=key: f"{key}: {m}")


def test_vectorize_must_be_a_boolean():
    with pytest.raises(ConfigError, match="vectorize must be true or false, got 'yes'"):
        GeneratorModule(teacher=TEACHER, vectorize="yes")
