"""Tests of kegnet_pl.compression: EVBMF, Tucker-2 layers, specs and presets, and the kegnet-compress command."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from kegnet_pl.compression import (
    PAPER_EVBMF_RANKS,
    PRESETS,
    compress,
    compress_with_report,
    evbmf,
    evbmf_rank,
    factorize_linear,
    parameter_count,
    tucker2_conv,
)
from kegnet_pl.compression.cli import main
from kegnet_pl.errors import ConfigError
from kegnet_pl.nets import MLP, LeNet5, ResNet14

try:  # installed with scikit-learn
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None


@pytest.fixture(autouse=True)
def _seed_and_one_blas_thread() -> Iterator[None]:
    """The SVDs here are small: one BLAS thread is fastest, and threads that spin on a busy runner take seconds."""
    torch.manual_seed(0)
    with threadpool_limits(limits=1, user_api="blas") if threadpool_limits else nullcontext():
        yield


def _planted_conv(out_channels: int, in_channels: int, ranks: tuple[int, int], noise: float = 0.0) -> nn.Conv2d:
    """A 3x3 convolution whose weight has exactly the Tucker-2 ranks ``(out, in)``, plus optional noise."""
    generator = torch.Generator().manual_seed(1)
    core = torch.randn(ranks[0], ranks[1], 3, 3, generator=generator)
    u_out = torch.linalg.qr(torch.randn(out_channels, ranks[0], generator=generator))[0]
    u_in = torch.linalg.qr(torch.randn(in_channels, ranks[1], generator=generator))[0]
    weight = torch.einsum("abkl,oa,ib->oikl", core, u_out, u_in)
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(weight + noise * torch.randn(weight.shape, generator=generator))
    return conv


# --- Tucker-2 layers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 2, "bias": True},
        {"kernel_size": (3, 5), "stride": (1, 2), "padding": (2, 1), "bias": False},
        {"kernel_size": 3, "padding": "same", "dilation": 2, "padding_mode": "reflect"},
    ],
)
def test_conv_full_rank_reproduces_the_layer(options: dict) -> None:
    conv = nn.Conv2d(6, 10, **options)
    replacement = tucker2_conv(conv, (10, 6))
    assert list(dict(replacement.named_children())) == ["first", "core", "last"]
    core = replacement.core
    assert (core.stride, core.padding, core.dilation, core.padding_mode) == (
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.padding_mode,
    )
    assert replacement.first.bias is None and core.bias is None
    assert (replacement.last.bias is None) == (conv.bias is None)
    x = torch.randn(2, 6, 17, 19)
    torch.testing.assert_close(replacement(x), conv(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_full_rank_reproduces_the_layer(bias: bool) -> None:
    linear = nn.Linear(20, 12, bias=bias)
    replacement = factorize_linear(linear, (12, 20))
    assert [m.weight.shape for m in replacement] == [(20, 20), (12, 20), (12, 12)]
    x = torch.randn(4, 3, 20)
    torch.testing.assert_close(replacement(x), linear(x), atol=1e-4, rtol=1e-4)


def test_conv_at_its_tucker_ranks_is_exact() -> None:
    """At the weight's true Tucker-2 ranks the truncated replacement is still exact (not only at full rank)."""
    conv = _planted_conv(24, 16, (5, 3))
    replacement = tucker2_conv(conv, (5, 3))
    assert [tuple(m.weight.shape) for m in replacement] == [(3, 16, 1, 1), (5, 3, 3, 3), (24, 5, 1, 1)]
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(replacement(x), conv(x), atol=1e-4, rtol=1e-4)


def test_linear_at_its_matrix_rank_is_exact() -> None:
    linear = nn.Linear(30, 25)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(25, 4) @ torch.randn(4, 30))
    replacement = factorize_linear(linear, (4, 4))
    x = torch.randn(5, 30)
    torch.testing.assert_close(replacement(x), linear(x), atol=1e-4, rtol=1e-4)


def test_replacement_keeps_dtype_mode_and_trainability() -> None:
    conv = nn.Conv2d(4, 8, 3).double().eval().requires_grad_(False)
    replacement = tucker2_conv(conv, (2, 2))
    assert all(p.dtype == torch.float64 and not p.requires_grad for p in replacement.parameters())
    assert not any(m.training for m in replacement.modules())


def test_grouped_conv_is_refused() -> None:
    with pytest.raises(ConfigError, match="groups=2"):
        tucker2_conv(nn.Conv2d(4, 8, 3, groups=2), (4, 2))


# --- specs, presets and reports ----------------------------------------------------------------------------------


def test_lenet5_conv3_arithmetic() -> None:
    """conv3 (16 -> 120, k5) at ranks out 11, in 7: 112 + 1925 + 1320 + 120 bias = 3,477 parameters."""
    _, report = compress_with_report(LeNet5(), {"conv3": [11, 7]})
    (layer,) = report.layers
    assert (layer.name, layer.kind, layer.shape, layer.ranks) == ("conv3", "Conv2d", (120, 16, 5, 5), (11, 7))
    assert (layer.params_before, layer.params_after) == (48_120, 3_477)


@pytest.mark.parametrize(
    ("preset", "params", "ratio"),
    [("lenet5-s1", 17_063, "3.62"), ("lenet5-s2", 15_045, "4.10"), ("lenet5-s3", 13_728, "4.49")],
)
def test_lenet5_presets_match_the_paper(preset: str, params: int, ratio: str) -> None:
    teacher = LeNet5()
    student, report = compress_with_report(teacher, preset, evbmf_ranks=PAPER_EVBMF_RANKS["lenet5"])
    assert report.params_before == parameter_count(teacher) == 61_706
    assert report.params_after == parameter_count(student) == params
    assert f"{report.ratio:.2f}" == ratio
    assert student(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert isinstance(teacher.conv3, nn.Conv2d)  # not in place


@pytest.mark.parametrize(
    ("preset", "params", "ranks"),
    [
        ("lenet5-paper-s1", 17_063, [(11, 7)]),
        ("lenet5-paper-s2", 15_045, [(4, 3), (11, 7)]),
        ("lenet5-paper-s3", 13_728, [(4, 3), (8, 5)]),
    ],
)
def test_paper_rank_presets_give_the_papers_students_on_any_lenet5(preset: str, params: int, ranks: list) -> None:
    teacher = LeNet5()  # random weights: EVBMF would pick other ranks, the paper presets must not run it
    student, report = compress_with_report(teacher, preset)
    assert [layer.ranks for layer in report.layers] == ranks
    assert report.params_after == parameter_count(student) == params


def test_lenet5_s3_ranks() -> None:
    _, report = compress_with_report(LeNet5(), PRESETS["lenet5-s3"], evbmf_ranks=PAPER_EVBMF_RANKS["lenet5"])
    assert report.ranks() == {"conv2": [4, 3], "conv3": [8, 5]}


def test_resnet14_stage3_conv1_pattern() -> None:
    teacher = ResNet14()
    student, report = compress_with_report(teacher, {"layers3.*.conv1": [16, 8]})
    assert [layer.name for layer in report.layers] == ["layers3.0.conv1", "layers3.1.conv1"]
    assert sum(isinstance(m, nn.Sequential) and hasattr(m, "core") for m in student.modules()) == 2
    assert "layers3.1.conv1.core.weight" in student.state_dict()
    assert isinstance(teacher.layers3[0].conv1, nn.Conv2d)
    assert student.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet14_preset_with_evbmf_runs() -> None:
    student, report = compress_with_report(ResNet14(), "resnet14-s3")
    assert len(report.layers) == 4
    assert all(1 <= rank <= 64 for layer in report.layers for rank in layer.ranks)
    assert report.params_after < report.params_before
    assert student.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_mlp_preset_reduces_only_the_100_unit_modes() -> None:
    teacher = MLP((64,), 10)
    student, report = compress_with_report(teacher, "mlp-r5")
    ranks = report.ranks()
    assert len(ranks) == 11
    assert ranks["layers.0"] == [5, 64] and ranks["layers.30"] == [10, 5]
    assert all(ranks[f"layers.{3 * i}"] == [5, 5] for i in range(1, 10))
    assert report.params_before == 98_410 and report.params_after == 15_801
    assert isinstance(student.layers[1], nn.ELU) and isinstance(student.layers[2], nn.Dropout)
    assert student.eval()(torch.randn(3, 64)).shape == (3, 10)


@pytest.mark.parametrize(
    ("rule", "ranks"),
    [
        (8, (8, 8)),
        ([9, 4], (9, 4)),
        (0.5, (60, 8)),  # conv3 is 120 x 16
        (0.01, (1, 1)),
        ("full", (120, 16)),
        ([10, None], (10, 16)),
        ([1.0, "full"], (120, 16)),
        ({120: 10}, (10, 16)),
        ({"16": 0.25}, (120, 4)),
    ],
)
def test_rank_rules(rule: object, ranks: tuple[int, int]) -> None:
    _, report = compress_with_report(LeNet5(), {"conv3": rule})
    assert report.layers[0].ranks == ranks


def test_mode_size_mapping_leaves_other_layers_alone() -> None:
    student, report = compress_with_report(LeNet5(), {"*": {120: 10}})
    assert report.ranks() == {"conv3": [10, 16], "fc1": [84, 10]}  # conv3 is 120 x 16, fc1 is 84 x 120
    assert isinstance(student.conv2, nn.Conv2d) and isinstance(student.fc2, nn.Linear)
    with pytest.raises(ConfigError, match=r"'fc\*' matches no compressible layer with a mode size in \{100: 5\}"):
        compress(LeNet5(), {"fc*": {100: 5}})
    with pytest.raises(ConfigError, match=r"'conv3' maps mode sizes \{100: 5\}.*\(120, 16\)"):
        compress(LeNet5(), {"conv3": {100: 5}})


def test_evbmf_rule_finds_planted_ranks() -> None:
    model = nn.Sequential(_planted_conv(64, 48, (6, 4), noise=1e-3), nn.ReLU())
    _, report = compress_with_report(model, {"*": "evbmf"})
    assert report.ranks() == {"0": [6, 4]}


def test_exact_name_beats_pattern_and_conflicting_patterns_fail() -> None:
    _, report = compress_with_report(MLP((64,), 10), {"layers.*": 5, "layers.0": [5, "full"], "layers.30": [10, 5]})
    assert report.ranks()["layers.0"] == [5, 64] and report.ranks()["layers.3"] == [5, 5]
    with pytest.raises(ConfigError, match=r"'layers\.\*' \(5\) and 'layers\.\?' \(6\)"):
        compress(MLP((64,), 10), {"layers.*": 5, "layers.?": 6})


def test_pattern_skips_grouped_conv_but_name_refuses_it() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 8, 3))
    _, report = compress_with_report(model, {"*": 2})
    assert report.ranks() == {"1": [2, 2]}
    with pytest.raises(ConfigError, match="'0' is a Conv2d with groups=2"):
        compress(model, {"0": 2})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"conv9": 4}, r"'conv9' names no layer.*conv1, conv2, conv3, fc1, fc2"),
        ({"layers.*": 4}, r"'layers\.\*' matches no compressible layer.*conv1, conv2, conv3, fc1, fc2"),
        ({"conv3": [121, 5]}, r"layer 'conv3'.*output-mode rank 121.*the maximum is 120"),
        ({"fc1": 90}, r"layer 'fc1'.*rank 90.*the maximum is 84"),
        ({"conv3": 0}, r"rank 0 is below 1"),
        ({"conv3": [8, -1]}, r"input mode: rank -1 is below 1"),
        ({"conv3": 0.0}, r"fraction in \(0, 1\]"),
        ({"conv3": 5.0}, r"write 5 for rank 5"),
        ({"conv3": "tucker"}, r"'tucker' is not a rank rule"),
        ({"conv3": [1, 2, 3]}, r"a rank pair is \[out, in\]"),
        ({"conv3": {"big": 3}}, r"mode-size keys must be positive integers"),
        ({}, r"spec is empty"),
        ("lenet5-s9", r"unknown compression preset 'lenet5-s9'"),
        ("resnet14-s1", r"preset 'resnet14-s1' is for resnet14 networks \(resnet14-s1, .*\), not for LeNet5"),
    ],
)
def test_spec_errors(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compress(LeNet5(), spec)


def test_module_name_hints_at_a_pattern() -> None:
    with pytest.raises(ConfigError, match=r"'layers3' is a Sequential.*write 'layers3\.\*'.*layers3\.1\.conv2"):
        compress(ResNet14(), {"layers3": 4})


def test_failed_inplace_compression_changes_nothing() -> None:
    model = LeNet5()
    with pytest.raises(ConfigError, match="conv3"):
        compress(model, {"conv2": 2, "conv3": 500}, inplace=True)
    assert isinstance(model.conv2, nn.Conv2d)


def test_evbmf_ranks_must_name_a_layer() -> None:
    with pytest.raises(ConfigError, match="evbmf_ranks names 'conv7'"):
        compress(LeNet5(), "lenet5-s1", evbmf_ranks={"conv7": (2, 2)})
    with pytest.raises(ConfigError, match="rank 200 is out of range"):
        compress(LeNet5(), "lenet5-s1", evbmf_ranks={"conv3": (200, 2)})


def test_inplace_returns_the_same_model() -> None:
    model = LeNet5()
    assert compress(model, {"fc1": 10}, inplace=True) is model
    assert isinstance(model.fc1, nn.Sequential)


# --- EVBMF -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_evbmf_recovers_the_rank_of_a_noisy_low_rank_matrix(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rank, noise = 5, 0.1
    matrix = rng.normal(size=(60, rank)) @ rng.normal(size=(rank, 40)) + noise * rng.normal(size=(60, 40))
    result = evbmf(matrix)
    assert result.rank == rank
    assert result.sigma2 == pytest.approx(noise**2, rel=0.2)
    assert result.u.shape == (60, rank) and result.v.shape == (40, rank)
    observed = np.linalg.svd(matrix, compute_uv=False)[:rank]
    assert np.all((result.s > 0) & (result.s < observed))  # EVB shrinks the kept singular values
    assert evbmf_rank(matrix.T) == rank
    assert evbmf(matrix, exact_threshold=True).rank == rank
    assert evbmf(matrix, sigma2=noise**2).rank == rank
    assert evbmf(matrix, h=3).rank == 3


@pytest.mark.parametrize("seed", range(4))
def test_evbmf_finds_no_signal_in_pure_noise(seed: int) -> None:
    """For pure noise the EVB threshold lies above the largest noise singular value, sigma (sqrt(L) + sqrt(M))."""
    matrix = np.random.default_rng(seed).normal(size=(60, 40))
    result = evbmf(matrix)
    assert result.rank == 0
    assert result.sigma2 == pytest.approx(1.0, rel=0.1)
    assert result.threshold > np.sqrt(result.sigma2) * (np.sqrt(60) + np.sqrt(40))
    assert evbmf(matrix, sigma2=1.0).rank == 0


def test_evbmf_edge_cases() -> None:
    assert evbmf(np.ones((1, 30))).rank == 0  # one row: signal and noise cannot be told apart
    assert evbmf(np.zeros((5, 8))).rank == 0
    assert evbmf(torch.randn(6, 9, requires_grad=True)).rank == 0
    with pytest.raises(ConfigError, match="2-D matrix"):
        evbmf(np.ones(5))
    with pytest.raises(ConfigError, match="sigma2"):
        evbmf(np.ones((3, 3)), sigma2=-1.0)


# --- kegnet-compress ---------------------------------------------------------------------------------------------

LENET_ARGS = ["--arch", "lenet5", "--input-shape", "1", "32", "32", "--num-classes", "10"]


@pytest.mark.parametrize("layout", ["plain", "model_state", "lightning"])
def test_cli_prints_layers_and_totals(layout: str, tmp_path, capsys) -> None:
    state = LeNet5().state_dict()
    content = {
        "plain": state,
        "model_state": {"model_state": state},
        "lightning": {"state_dict": {f"net.{key}": value for key, value in state.items()}, "epoch": 3},
    }[layout]
    path = tmp_path / "teacher.pth"
    torch.save(content, path)
    assert main([str(path), *LENET_ARGS, "--spec", json.dumps({"conv3": [11, 7]})]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("conv3 Conv2d 120x16x5x5 ranks out=11 in=7")
    assert lines[-1] == "params_before=61706 params_after=17063 ratio=3.62"


def test_cli_preset_and_yaml_spec_with_random_init(capsys) -> None:
    assert main(["--random-init", *LENET_ARGS, "--preset", "lenet5-s2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["conv2", "conv3"]
    assert re.fullmatch(r"params_before=61706 params_after=\d+ ratio=\d+\.\d\d", lines[-1])
    assert main(["--random-init", *LENET_ARGS, "--spec", "conv3: [8, 5]\nconv2: [4, 3]"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "params_before=61706 params_after=13728 ratio=4.49"


def test_cli_takes_the_other_commands_spelling_and_list_form_of_the_shape(capsys) -> None:
    other = ["--random_init", "--arch", "lenet5", "--input_shape", "[1,32,32]", "--num_classes", "10"]
    assert main([*other, "--preset", "lenet5-paper-s3"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "params_before=61706 params_after=13728 ratio=4.49"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--random-init", "--spec", '{"conv9": 3}'], "'conv9' names no layer"),
        (["--random-init", "--arch", "lenet5", "--input-shape", "1", "x", "--spec", "{}"], "--input-shape takes sizes"),
        (["--random-init", "--spec", "[1, 2]"], "--spec must map layer names"),
        (["missing.pth", "--preset", "lenet5-s1"], "checkpoint file 'missing.pth' does not exist"),
        (["--preset", "lenet5-s1"], "give either TEACHER_FILE or --random-init"),
        (["--random-init"], "one of the arguments --preset --spec is required"),
    ],
)
def test_cli_errors_exit_2_with_one_line(extra: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*LENET_ARGS, *extra])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # no usage block either
    assert lines[0].startswith("kegnet-compress: error: ") and message in lines[0]


def test_cli_rejects_weights_of_another_network(tmp_path, capsys) -> None:
    path = tmp_path / "mlp.pth"
    torch.save(MLP((64,), 10).state_dict(), path)
    with pytest.raises(SystemExit) as exit_info:
        main([str(path), *LENET_ARGS, "--preset", "lenet5-s1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not fit the architecture 'lenet5'" in err


def test_cli_reads_the_architecture_from_a_kegnet_checkpoint(capsys) -> None:
    shipped = Path(__file__).resolve().parents[1] / "checkpoints" / "mnist_subset_lenet5.ckpt"
    assert main([str(shipped), "--preset", "lenet5-s3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].startswith("conv3 Conv2d 120x16x5x5 ranks out=8 in=5")
    assert re.fullmatch(r"params_before=61706 params_after=\d+ ratio=\d+\.\d\d", lines[-1])
