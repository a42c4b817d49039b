"""The payoff of compression (parameters, FLOPs, CPU latency against the teacher) and the results a pipeline writes
with it: results.json, results.md, accuracy_vs_size.png and samples.png."""

import io
import json

import pytest
import torch
from conftest import TEACHER
from PIL import Image
from torch import nn

from kegnet_pl import payoff
from kegnet_pl.pipeline import with_payoff, write_results

SHAPE = (1, 6, 6)


def tiny(channels: int) -> nn.Module:
    """A 3x3 convolution to ``channels`` maps of 4x4, then a linear layer to 10 classes."""
    return nn.Sequential(nn.Conv2d(1, channels, 3), nn.Flatten(), nn.Linear(channels * 16, 10)).eval()


def test_parameters_and_flops_of_known_layers_are_exact():
    assert payoff.size(nn.Linear(10, 5), (10,)) == {"params": 55, "flops": 2 * 10 * 5}
    conv = nn.Conv2d(3, 8, 3)  # (3, 6, 6) -> (8, 4, 4): 128 outputs of 27 multiply-adds each
    assert payoff.size(conv, (3, 6, 6)) == {"params": 8 * 27 + 8, "flops": 2 * 128 * 27}
    # 4 maps: conv 4*16 outputs x 9 + linear 64 x 10; 2 maps: half of each
    assert payoff.size(tiny(4), SHAPE) == {"params": 40 + 650, "flops": 2 * (64 * 9 + 64 * 10)}
    assert payoff.size(tiny(2), SHAPE) == {"params": 20 + 330, "flops": 2 * (32 * 9 + 32 * 10)}


def test_measure_gives_every_network_its_ratios_to_the_teacher():
    figures = payoff.measure({"teacher": tiny(4), "student": tiny(2)}, SHAPE, threads=1, rounds=1, min_run_time=0.01)
    teacher, student = figures["teacher"], figures["student"]
    assert (student["params"], student["flops"]) == (350, 1216)
    assert student["compression_ratio"] == round(690 / 350, 3) and student["flops_ratio"] == 2.0
    for batch in payoff.BATCHES:
        mine, theirs = student[f"latency_b{batch}_ms"], teacher[f"latency_b{batch}_ms"]
        assert 0 < mine < 1000 and 0 < theirs < 1000  # milliseconds
        assert student[f"speedup_b{batch}"] == round(theirs / mine, 3) and teacher[f"speedup_b{batch}"] == 1.0
    assert teacher["compression_ratio"] == teacher["flops_ratio"] == 1.0
    untimed = payoff.measure({"teacher": tiny(4), "student": tiny(2)}, SHAPE, threads=0)
    assert untimed["student"]["flops_ratio"] == 2.0
    assert untimed["student"]["latency_b1_ms"] is None and untimed["student"]["speedup_b256"] is None


def test_students_are_built_as_the_student_module_builds_them():
    nets, spec = payoff.networks(TEACHER, ["lenet5-s1", "lenet5-half"])
    assert list(nets) == ["teacher", "lenet5-s1", "lenet5-half"] and spec["arch"] == "lenet5"
    sizes = {name: payoff.size(net, spec["input_shape"]) for name, net in nets.items()}
    assert sizes["teacher"]["params"] == 61_706 and sizes["lenet5-half"]["params"] == 15_738
    assert sizes["lenet5-s1"]["params"] < 61_706 and sizes["lenet5-s1"]["flops"] < sizes["teacher"]["flops"]
    assert any(isinstance(module, nn.Conv2d) for module in nets["teacher"].modules())  # the teacher is not compressed


def test_table_and_slower_sentences():
    teacher = {"params": 1000, "flops": 4_000_000, "latency_b1_ms": 1.0, "latency_b256_ms": 40.0}
    student = {"params": 250, "flops": 1_000_000, "latency_b1_ms": 1.25, "latency_b256_ms": 20.0}
    figures = {"teacher": payoff.with_ratios(teacher, teacher), "student": payoff.with_ratios(student, teacher)}
    assert figures["student"]["speedup_b1"] == 0.8 and figures["student"]["speedup_b256"] == 2.0
    lines = payoff.table(figures)
    assert lines[0] == "| network | parameters | x | MFLOPs | x | batch 1 (ms) | x | batch 256 (ms) | x |"
    assert lines[3] == "| student | 250 | 4.00x | 1.000 | 4.00x | 1.250 | 0.80x | 20.00 | 2.00x |"
    assert payoff.slower(figures) == [
        "student is not faster than its teacher on this CPU: 0.80x at batch 1 (25% more time)."
    ]
    assert payoff.slower({"a": {"speedup_b1": 0.996, "speedup_b256": 1.2}}) == []  # 1.00x as the table shows it
    sizes_only = payoff.table({"teacher": {"params": 1000, "compression_ratio": 1.0}})
    assert sizes_only[0] == "| network | parameters | x |"  # no FLOPs or latency columns without figures


def rows_fixture():
    """Two seeds of a teacher and two students, each evaluated after Tucker alone and trained by KegNet and DFAD."""
    teacher = {"method": "teacher", "student": None, "accuracy": 0.99, "params": 690, "compression_ratio": 1.0}
    rows = []
    for seed in (0, 1):
        rows.append({**teacher, "seed": seed, "seconds": 0.0})
        for number, params in ((1, 350), (2, 200)):
            for method, accuracy in (("tucker", 0.5), ("kegnet", 0.9 + 0.02 * seed), ("dfad", 0.8)):
                row = {"method": method, "student": number, "seed": seed, "accuracy": accuracy - 0.1 * number}
                rows.append({**row, "params": params, "compression_ratio": round(690 / params, 3), "seconds": 1.0})
    return rows


def png(path):
    image = Image.open(io.BytesIO(path.read_bytes()))
    image.load()  # the whole file decodes
    return image


def test_results_writer_writes_payoff_and_both_pngs(tmp_path):
    measured = {
        "teacher": {"params": 690, "flops": 2432, "latency_b1_ms": 0.02, "latency_b256_ms": 2.0},
        "s1": {"params": 350, "flops": 1216, "latency_b1_ms": 0.025, "latency_b256_ms": 1.0},
        "s2": {"params": 200, "flops": 608, "latency_b1_ms": 0.01, "latency_b256_ms": 0.5},
    }
    figures = {name: payoff.with_ratios(mine, measured["teacher"]) for name, mine in measured.items()}
    grid = tmp_path / "grid.png"
    Image.new("RGB", (120, 90), "white").save(grid)
    stages = [
        {"stage": f"student{n}-{m}", "seed": s, "seconds": 1.0}
        for s in (0, 1)
        for n in (1, 2)
        for m in ("kegnet", "dfad")
    ]
    out = tmp_path / "run"
    rows = with_payoff(rows_fixture(), ["s1", "s2"], figures)
    table = write_results(out, rows, stages, ["s1", "s2"], samples=grid, latency_threads=1)

    saved = json.loads((out / "results.json").read_text())
    teacher, s1, s2 = saved[0], saved[2], saved[5]
    assert (teacher["flops"], teacher["flops_ratio"], teacher["speedup_b1"]) == (2432, 1.0, 1.0)
    assert (s1["student"], s1["flops"], s1["flops_ratio"], s1["speedup_b1"], s1["speedup_b256"]) == (
        1,
        1216,
        2.0,
        0.8,
        2.0,
    )
    assert (s2["student"], s2["flops_ratio"], s2["speedup_b1"], s2["latency_b256_ms"]) == (2, 4.0, 2.0, 0.5)
    assert all(set(payoff.ROW_KEYS) <= set(row) for row in saved)
    assert (out / "results.md").read_text() == table + "\n"
    assert "| 1 (s1) | 350 | 1.97x | 0.001 | 2.00x | 0.025 | 0.80x | 1.000 | 2.00x |" in table
    assert "1 (s1) is not faster than its teacher on this CPU: 0.80x at batch 1 (25% more time)." in table
    assert "2 (s2) is not faster" not in table

    plot = png(out / "accuracy_vs_size.png")
    assert plot.format == "PNG" and 500 <= plot.width <= 2000 and 300 <= plot.height <= 1500
    colours = plot.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(colours) > 20  # drawn: series, error bars, text, not a blank canvas
    assert png(out / "samples.png").size == (120, 90)

    write_results(tmp_path / "plain", rows_fixture(), stages, ["s1", "s2"])  # rows without payoff, no samples
    assert "| 1 (s1) | 350 | 1.97x |" in (tmp_path / "plain" / "results.md").read_text()
    assert png(tmp_path / "plain" / "accuracy_vs_size.png").format == "PNG"
    assert not (tmp_path / "plain" / "samples.png").exists()


def test_the_plot_has_a_series_per_method_with_its_error_bars(monkeypatch):
    from matplotlib.axes import Axes

    from kegnet_pl.plots import accuracy_vs_size

    drawn, lines = [], []
    real_errorbar, real_axhline = Axes.errorbar, Axes.axhline

    def errorbar(self, xs, ys, yerr=None, **kwargs):
        drawn.append((kwargs["label"], list(xs), list(ys), list(yerr)))
        return real_errorbar(self, xs, ys, yerr=yerr, **kwargs)

    def axhline(self, y=0, **kwargs):
        lines.append((y, kwargs["label"]))
        return real_axhline(self, y, **kwargs)

    monkeypatch.setattr(Axes, "errorbar", errorbar)
    monkeypatch.setattr(Axes, "axhline", axhline)
    accuracy_vs_size(
        rows_fixture(), {"teacher": "Teacher", "tucker": "Tucker only", "kegnet": "+KegNet", "dfad": "+DFAD"}
    )
    assert [label for label, *_ in drawn] == ["Tucker only", "+KegNet", "+DFAD"]
    label, xs, means, stds = drawn[1]  # KegNet: student 2 (200 parameters) then student 1 (350)
    assert means == pytest.approx([71.0, 81.0]) and stds == pytest.approx([1.4142, 1.4142], abs=1e-3)
    assert xs[0] == pytest.approx(200, abs=5) and xs[1] == pytest.approx(350, abs=5)
    assert drawn[0][3] == [0.0, 0.0]  # Tucker only: the same on both seeds
    assert lines == [(pytest.approx(99.0), "Teacher (690 parameters): 99.00")]


def test_pipeline_rejects_negative_latency_threads(tmp_path):
    from conftest import ROOT

    from kegnet_pl.errors import ConfigError
    from kegnet_pl.pipeline import Pipeline

    config = str(ROOT / "configs/mnist_subset/student.yaml")
    with pytest.raises(ConfigError, match="latency_threads must be 0"):
        Pipeline(config, config, str(tmp_path), ["lenet5-s1"], [], [0], [], [], None, latency_threads=-1)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_pipeline_measures_the_payoff_once_and_latency_threads_0_leaves_latency_out(tmp_path, monkeypatch, capsys):
    """Stages faked: the payoff of the generator config's teacher and the student preset, kept in payoff.json."""
    import yaml
    from conftest import ROOT

    from kegnet_pl.pipeline import Pipeline, main

    def fake_stage(self, folder, config, extra, train, threads=None):
        return {"test/acc": 0.9, "test/teacher_acc": 0.97, "params": 20_000, "teacher_params": 61_706,
                "compression_ratio": 3.0, "seconds": 1.0}  # fmt: skip

    monkeypatch.setattr(Pipeline, "run_stage", fake_stage)
    monkeypatch.setattr("kegnet_pl.pipeline.PAYOFF_MIN_RUN_TIME", 0.01)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "generator_config": str(ROOT / "configs/mnist_subset/generator.yaml"),
        "student_config": str(ROOT / "configs/mnist_subset/student.yaml"),
        "out": str(tmp_path / "run"), "students": ["lenet5-s1", "lenet5-half"], "baselines": [], "seeds": [0],
        "generator_args": [f"--model.teacher={TEACHER}"],
    }))  # fmt: skip
    main(["--config", str(config), "--latency_threads", "0"])
    run = tmp_path / "run"
    measured = json.loads((run / "payoff.json").read_text())
    assert measured["latency_threads"] == 0 and sorted(measured["networks"]) == ["lenet5-half", "lenet5-s1", "teacher"]
    rows = json.loads((run / "results.json").read_text())
    half = [row for row in rows if row["student"] == 2]
    assert half and all(row["flops"] == measured["networks"]["lenet5-half"]["flops"] for row in half)
    assert all(row["latency_b1_ms"] is None and row["speedup_b256"] is None for row in rows)
    assert "batch 1 (ms)" not in (run / "results.md").read_text() and "MFLOPs" in (run / "results.md").read_text()
    assert "payoff of 3 networks measured" in capsys.readouterr().out

    main(["--config", str(config), "--latency_threads", "0"])  # the same run again: the figures are reused
    assert "measured" not in capsys.readouterr().out
    main(["--config", str(config), "--latency_threads", "1"])  # another thread count: measured again, with latency
    assert json.loads((run / "payoff.json").read_text())["latency_threads"] == 1
    assert all(row["latency_b1_ms"] > 0 for row in json.loads((run / "results.json").read_text()))


def test_torch_cpp_extension_no_cuda_runtime_warning_is_silenced():
    """The latency figures import torch.utils.benchmark, whose cpp_extension warns on a GPU-less machine with a CUDA
    toolkit; kegnet_pl drops that one line and nothing else of that logger."""
    import logging

    import kegnet_pl  # noqa: F401  (installs the filter)

    logger = logging.getLogger("torch.utils.cpp_extension")

    def record(message):
        return logging.LogRecord(logger.name, logging.WARNING, __file__, 1, message, ("/usr/local",), None)

    assert not logger.filter(record("No CUDA runtime is found, using CUDA_HOME='%s'"))
    assert logger.filter(record("Error building extension under '%s'"))
