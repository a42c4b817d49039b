"""kegnet-pipeline on a tiny budget: outputs, skipping finished stages, and resuming after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT
from conftest import TINY_PIPELINE as TINY

from kegnet_pl import payoff
from kegnet_pl.pipeline import Pipeline, main, results_table

TUCKER_STAGES = ["tucker", "kegnet", "uniform"]


def write_config(tmp_path, **overrides):
    config = {**TINY, "out": str(tmp_path / "run"), **overrides}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def stage_commands(folder, verb):
    return [
        line for line in (folder / "stage.log").read_text().splitlines() if line.startswith("$") and f" {verb} " in line
    ]


def test_pipeline_writes_results_and_skips_finished_stages(tmp_path, capsys):
    config = write_config(tmp_path)
    main(["--config", str(config)])
    out = capsys.readouterr().out.strip().splitlines()
    run = tmp_path / "run"
    assert out[-1] == f"results: {run / 'results.json'}"
    rows = json.loads((run / "results.json").read_text())
    assert [(r["method"], r["student"]) for r in rows] == [
        ("teacher", None),
        ("tucker", 1),
        ("kegnet", 1),
        ("uniform", 1),
    ]
    for row in rows:
        keys = {"method", "student", "seed", "accuracy", "params", "compression_ratio", "seconds", *payoff.ROW_KEYS}
        if row["method"] in ("kegnet", "uniform"):  # trained students are scored without data
            keys |= {"probe_agreement", "probe_kl", "chosen"}
            assert 0 <= row["probe_agreement"] <= 1 and row["probe_kl"] >= 0
        assert set(row) == keys
        assert 0 <= row["accuracy"] <= 1 and row["seed"] == 0
    chosen = [row for row in rows if row.get("chosen")]
    assert len(chosen) == 1 and chosen[0]["probe_agreement"] == max(r["probe_agreement"] for r in rows[2:])
    assert "students scored on" in "\n".join(out) and "2 students scored without data" in "\n".join(out)
    assert rows[0]["params"] == 61_706 and rows[0]["compression_ratio"] == 1.0
    assert rows[1]["params"] < 61_706 and rows[1]["compression_ratio"] > 1
    measured = json.loads((run / "payoff.json").read_text())  # the student built here is the one the stages trained
    assert measured["networks"]["lenet5-s1"]["params"] == rows[1]["params"] == rows[2]["params"]
    assert rows[0]["flops_ratio"] == 1.0 and rows[1]["flops_ratio"] > 1 and rows[1]["speedup_b1"] > 0
    assert (run / "accuracy_vs_size.png").read_bytes().startswith(b"\x89PNG")
    table = (run / "results.md").read_text()
    assert "| +KegNet |" in table
    assert f"| **Chosen without data** (best probe agreement, below) | {100 * chosen[0]['accuracy']:.2f} |" in table
    name = {"kegnet": "+KegNet", "uniform": "+Uniform"}[chosen[0]["method"]]
    assert f"student 1: {name} (seed 0)." in table
    assert f"| {name} | {100 * chosen[0]['probe_agreement']:.2f} |" in table.split("artificial probes")[2]
    kl = json.loads((run / "seed0" / "student1-kegnet" / "result.json").read_text())["test/real_kl"]
    assert f"| +KegNet | {kl:.4f} |" in table.split("KL divergence from the teacher")[1]
    stage = run / "seed0" / "student1-kegnet"
    assert (stage / "checkpoints" / "last.ckpt").is_file() and list((stage / "tensorboard").rglob("events.*"))
    assert (stage / "config.yaml").is_file()
    grids = run / "seed0" / "generator" / "checkpoints" / "samples_gen-all.png"
    assert (run / "samples.png").read_bytes() == grids.read_bytes()  # every generator's grid, not generator 0's

    main(["--config", str(config)])  # again: every stage is skipped, the same table comes back
    again = capsys.readouterr().out
    assert again.count("finished before, skipped") == 4
    assert json.loads((run / "results.json").read_text()) == rows
    assert len(stage_commands(stage, "fit")) == 1


def start_pipeline(tmp_path, max_epochs, **popen):
    """A pipeline whose student stage trains ``max_epochs`` tiny epochs, once that stage has saved its first
    checkpoint: the process (started with ``popen``), its command and the stage folder."""
    config = write_config(tmp_path, student_args=[*TINY["student_args"][1:], f"--trainer.max_epochs={max_epochs}"])
    command = [sys.executable, "-m", "kegnet_pl.pipeline", "--config", str(config)]
    stage = tmp_path / "run" / "seed0" / "student1-kegnet"
    process = subprocess.Popen(command, **popen)
    deadline = time.time() + 240
    while not (stage / "checkpoints" / "last.ckpt").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.5)
    return process, command, stage


def test_killed_pipeline_resumes_the_interrupted_stage(tmp_path):
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    process, command, stage = start_pipeline(tmp_path, 40, **quiet)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGKILL)  # the pipeline and the stage it runs, mid-training
    process.wait()
    assert not (stage / "result.json").exists(), "the stage finished before it could be killed"

    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "generator: finished before, skipped" in done.stdout
    assert "student1-kegnet: resuming" in done.stdout
    fits = stage_commands(stage, "fit")
    assert len(fits) == 2 and "--ckpt_path" in fits[1] and "--ckpt_path" not in fits[0]
    assert len(stage_commands(tmp_path / "run" / "seed0" / "generator", "fit")) == 1
    assert done.stdout.strip().splitlines()[-1].startswith("results: ")


def children(pid):
    """The live processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (name)": state, ppid, ...
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_long_pipeline(tmp_path):
    """:func:`start_pipeline` with a student stage that runs for minutes (stdout and stderr piped): the process, the
    stage folder and the pipeline's stage processes (its workers)."""
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    process, _, stage = start_pipeline(tmp_path, 400, **pipe)
    assert process.poll() is None, process.communicate()[1][-2000:]
    workers = children(process.pid)
    assert workers, "the pipeline runs its stages in worker processes"
    return process, stage, workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_running_stage_and_exits_128_plus_its_number(tmp_path, signum):
    process, stage, workers = start_long_pipeline(tmp_path)
    process.send_signal(signum)  # the pipeline alone, as `kill`, a scheduler or `timeout -s INT` sends it
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, err[-2000:]
    assert f"stopped by {signum.name}" in err and "run the same command again to resume" in err
    assert "Traceback" not in err
    assert not any(alive(pid) for pid in workers)
    assert "kegnet: stopped by SIGTERM" in (stage / "stage.log").read_text()  # Lightning stopped it at a batch
    assert not (stage / "result.json").exists() and (stage / "checkpoints" / "last.ckpt").is_file()
    assert "uniform" not in out  # no stage started after the signal


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) and /proc")
def test_workers_stop_when_the_pipeline_is_killed(tmp_path):
    process, stage, workers = start_long_pipeline(tmp_path)
    process.kill()  # SIGKILL: no handler runs in the pipeline
    process.communicate()
    deadline = time.time() + 60
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers), "a worker ran on with no pipeline to answer"
    assert "kegnet: stopped by SIGTERM" in (stage / "stage.log").read_text()


def test_missing_config_is_one_clear_error(tmp_path, capsys):
    config = write_config(tmp_path, generator_config=str(tmp_path / "nope.yaml"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config)])
    assert exit_info.value.code == 2
    assert "kegnet-pipeline: error: config file" in capsys.readouterr().err


def test_results_table_means_and_fidelity():
    rows, stages = [], []
    for seed, (acc, kl) in enumerate([(0.97, 0.010), (0.95, 0.020)]):
        rows += [
            {"method": "teacher", "student": None, "seed": seed, "accuracy": 0.98, "params": 100,
             "compression_ratio": 1.0, "seconds": 0.0},
            {"method": "kegnet", "student": 1, "seed": seed, "accuracy": acc, "params": 40,
             "compression_ratio": 2.5, "seconds": 10.0 + seed},
        ]  # fmt: skip
        stages += [{"stage": "generator", "seed": seed, "seconds": 30.0}]
        stages += [{"stage": "student1-kegnet", "seed": seed, "test/real_kl": kl, "seconds": 10.0}]
    table = results_table(rows, ["lenet5-s1"], stages)
    assert "| Teacher | 98.00 ± 0.00 |" in table
    assert "| +KegNet | 96.00 ± 1.41 |" in table  # accuracy in %, sample std over seeds
    assert "| +KegNet | 0.0150 ± 0.0071 |" in table.split("KL divergence")[1]
    assert "+Uniform" not in table  # methods that did not run get no row
    assert "| 1 (lenet5-s1) | 40 | 2.50x |" in table and "| +KegNet | 10 s |" in table  # wall time per stage
    assert "Generator training: 30 s per seed" in table
    without = results_table(rows, ["lenet5-s1"], [{k: v for k, v in s.items() if k != "test/real_kl"} for s in stages])
    assert "KL divergence" not in without  # results written before the fidelity figures: no empty table


def test_a_users_teacher_reaches_the_generator_stage_without_editing_yaml(tmp_path, monkeypatch):
    from kegnet_pl.pipeline import Pipeline

    seen = {}

    def fake_stage(self, folder, config, extra, train, threads=None):
        seen[folder.name] = config
        return {
            "test/acc": 0.9,
            "test/teacher_acc": 0.99,
            "params": 10,
            "teacher_params": 40,
            "compression_ratio": 4,
            "seconds": 1,
        }

    monkeypatch.setattr(Pipeline, "run_stage", fake_stage)
    weights = tmp_path / "teacher.pt"
    args = ["--config", str(write_config(tmp_path)), "--teacher", str(weights), "--teacher_arch", "lenet5"]
    main([*args, "--input_shape", "[1,32,32]", "--num_classes", "10"])
    model = seen["generator"]["model"]["init_args"]
    assert (model["teacher"], model["teacher_arch"]) == (str(weights), "lenet5")
    assert (model["input_shape"], model["num_classes"]) == ([1, 32, 32], 10)
    assert "teacher_arch" not in seen["student1-kegnet"]["model"]["init_args"]  # students take it from the generators
    (tmp_path / "plain").mkdir()
    main(["--config", str(write_config(tmp_path / "plain"))])  # without the options the config's teacher stays
    assert "teacher_arch" not in seen["generator"]["model"]["init_args"]


TINY_DFAD = [
    "--trainer.max_epochs=1",
    "--model.student_steps=1",
    "--model.generator_width=8",
    "--data.batch_size=8",
    "--data.batches_per_epoch=2",
    "--data.val_batches=1",
]


def test_methods_run_side_by_side_with_their_own_budgets(tmp_path):
    """KegNet and DFAD on a student trained from scratch (no Tucker stage): a row each, their budgets tabulated."""
    config = write_config(
        tmp_path,
        students=["lenet5-half"],
        baselines=[],
        methods=["kegnet", "dfad"],
        method_configs={"dfad": str(ROOT / "configs/mnist_subset/dfad.yaml")},
        method_args={"dfad": TINY_DFAD},
        scratch_args=["--model.loss=l1"],
    )
    main(["--config", str(config)])
    run = tmp_path / "run"
    rows = json.loads((run / "results.json").read_text())
    assert [(r["method"], r["student"]) for r in rows] == [("teacher", None), ("kegnet", 1), ("dfad", 1)]
    (fit,) = stage_commands(run / "seed0" / "student1-kegnet", "fit")
    assert fit.endswith("--model.loss=l1")  # a student trained from scratch takes scratch_args after student_args
    hparams = torch.load(run / "seed0" / "student1-kegnet" / "checkpoints" / "last.ckpt", weights_only=True)
    assert hparams["hyper_parameters"]["loss"] == "l1"
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert rows[1]["params"] == rows[2]["params"] == 15_738  # the same lenet5-half, distilled by each method
    assert all(0 <= r["probe_agreement"] <= 1 for r in rows[1:])  # methods meet the same data-free score
    assert sum(r["chosen"] for r in rows[1:]) == 1
    assert not (run / "seed0" / "student1-tucker").exists()
    dfad = yaml.safe_load((run / "seed0" / "student1-dfad" / "config.yaml").read_text())
    model = dfad["model"]["init_args"]
    teacher = str(ROOT / "checkpoints/mnist_subset_lenet5.ckpt")  # the generator stage's, from generator_args
    assert (model["teacher"], model["student"], model["seed"]) == (teacher, "lenet5-half", 0)
    assert dfad["trainer"]["default_root_dir"] == str(run / "seed0" / "student1-dfad")
    done = json.loads((run / "seed0" / "student1-dfad" / "result.json").read_text())
    assert (done["train_batches"], done["batch_size"], done["optimizer_steps"]) == (2, 8, 4)  # 1 student + 1 generator
    table = (run / "results.md").read_text()
    assert "the budget its config and arguments give" in table.splitlines()[0]
    assert "| Tucker only | from scratch |" in table and "| +KegNet |" in table and "| +DFAD |" in table
    assert "| +DFAD | 2 x 8 (4 steps), " in table and "| +KegNet | 4 x 16 (4 steps), " in table


def test_scratch_args_reach_only_the_stages_of_students_trained_from_scratch(tmp_path):
    pipeline = Pipeline(
        TINY["generator_config"],
        TINY["student_config"],
        str(tmp_path / "run"),
        ["lenet5-s1", "lenet5-half"],
        ["uniform"],
        [0],
        [],
        ["--a=1"],
        None,
        scratch_args=["--b=2"],
    )
    compressed = pipeline._student_stages("lenet5-s1", "generators.ckpt")
    scratch = pipeline._student_stages("lenet5-half", "generators.ckpt")
    assert [(name, extra) for name, _, _, extra in compressed] == [(name, ["--a=1"]) for name in TUCKER_STAGES]
    assert [(name, extra) for name, _, _, extra in scratch] == [
        ("kegnet", ["--a=1", "--b=2"]),
        ("uniform", ["--a=1", "--b=2"]),
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"methods": ["kegnet", "dafll"]}, "unknown methods ['dafll']; known: kegnet, dfad"),
        (
            {"baselines": ["uniform", "stroke"]},
            "unknown baselines ['stroke']; choose from uniform, normal, strokes, no-generators",
        ),
        ({"methods": ["dfad"], "method_configs": {"dfad": "nope/dfad.yaml"}}, "method_configs.dfad: config file"),
        (
            {"method_args": {"dafl": ["--trainer.max_epochs=1"]}},
            "method_args names ['dafl'], which method_configs gives no config for",
        ),
    ],
)
def test_bad_methods_are_one_clear_error(tmp_path, capsys, overrides, message):
    overrides = {"method_configs": {"dfad": str(ROOT / "configs/mnist_subset/dfad.yaml")}, **overrides}
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(write_config(tmp_path, **overrides))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("kegnet-pipeline: error: ") and message in err and len(err.strip().splitlines()) == 1


def fake_finished_stages(monkeypatch):
    """Pipeline.run_stage writing what a finished stage leaves (config.yaml, args.json, result.json), no training."""
    from kegnet_pl import pipeline as module

    real = module.Pipeline.run_stage

    def fake_stage(self, folder, config, extra, train, threads=None):
        if (folder / module.RESULT).is_file():
            return real(self, folder, config, extra, train, threads)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (folder / module.ARGS).write_text(json.dumps(list(extra)))
        result = {"test/acc": 0.9, "test/teacher_acc": 0.99, "params": 10, "teacher_params": 40}
        result |= {"compression_ratio": 4, "seconds": 1}
        (folder / module.RESULT).write_text(json.dumps(result))
        return result

    monkeypatch.setattr(module.Pipeline, "run_stage", fake_stage)
    monkeypatch.setattr(module.Pipeline, "_choose", lambda self, plan, rows: rows)


def test_a_finished_stage_is_not_reused_under_other_settings(tmp_path, monkeypatch, capsys):
    fake_finished_stages(monkeypatch)
    config = str(write_config(tmp_path))
    teacher = ["--teacher", str(ROOT / "checkpoints/mnist_subset_lenet5.ckpt")]
    main(["--config", config, *teacher])
    main(["--config", config, *teacher])  # the same settings: every stage skipped
    assert capsys.readouterr().out.count("finished before, skipped") == 4
    for change, named in [
        (["--teacher", str(ROOT / "checkpoints/mnist_lenet5.ckpt")], "model.init_args.teacher: '"),
        ([*teacher, "--student_args+=--model.lr=0.5"], "arguments: "),
        ([*teacher, "--students", "[lenet5-s3]"], "model.init_args.student: 'lenet5-s1' -> 'lenet5-s3'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--config", config, *change])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "was run with other settings than this command gives it" in err and named in err, err
        assert "Give another --out for a new run, or delete" in err and len(err.strip().splitlines()) == 1
    copy = tmp_path / "copy"  # an earlier run's generators copied into a new run folder are taken as they are
    (copy / "seed0").mkdir(parents=True)
    (tmp_path / "run" / "seed0" / "generator").rename(copy / "seed0" / "generator")
    main(["--config", config, *teacher, "--out", str(copy)])
    assert "generator: finished before, skipped" in capsys.readouterr().out


def test_the_command_a_stage_log_starts_with_pastes_into_a_shell(tmp_path):
    """Arguments with spaces (``--model.strokes={background: -0.4, ink: 2.8}``) are quoted in the ``$`` line."""
    import shlex
    import threading

    pipeline = Pipeline.__new__(Pipeline)  # only what running one command needs
    pipeline._lock, pipeline._processes = threading.Lock(), set()
    argument = "--model.strokes={background: -0.4242, ink: 2.8215}"
    pipeline._kegnet(tmp_path, "this", ["fit", argument], threads=1)  # `python -m this` ignores its arguments
    (line,) = [text for text in (tmp_path / "stage.log").read_text().splitlines() if text.startswith("$ ")]
    assert shlex.split(line[2:]) == ["OMP_NUM_THREADS=1", sys.executable, "-m", "this", "fit", argument]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"seeds": []}, "give at least one seed (e.g. seeds: [0])"), ({"out": "FILE"}, "is a file; give a folder")],
)
def test_no_seeds_or_an_out_that_is_a_file_is_one_clear_error(tmp_path, capsys, overrides, message):
    (tmp_path / "taken.pt").write_bytes(b"x")
    overrides = {key: str(tmp_path / "taken.pt") if value == "FILE" else value for key, value in overrides.items()}
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(write_config(tmp_path, **overrides))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_teacher_options_in_a_stages_message_are_named_as_the_pipeline_takes_them():
    from kegnet_pl.pipeline import pipeline_flags

    message = "give them, for example --model.init_args.teacher_arch lenet5 --model.init_args.input_shape '[1,32,32]'"
    python = "; from Python, teacher_arch='lenet5', input_shape=[1, 32, 32]"  # not what the pipeline takes
    assert pipeline_flags(message + python) == "give them, for example --teacher_arch lenet5 --input_shape '[1,32,32]'"


def test_a_misspelt_stage_option_fails_before_any_stage_runs(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(Pipeline, "run_stage", lambda self, folder, *args, **kwargs: ran.append(folder))
    config = str(write_config(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", config, "--student_args+=--model.lrr=0.1"])
    assert exit_info.value.code == 2 and not ran
    err = capsys.readouterr().err
    assert err.startswith("kegnet-pipeline: error: seed0/student1-kegnet would not start: StudentModule has no option")
    assert "--model.init_args.lrr" in err and len(err.strip().splitlines()) == 1


def test_students_that_do_not_fit_the_teacher_fail_before_any_stage_runs(tmp_path, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(Pipeline, "run_stage", lambda self, folder, *args, **kwargs: ran.append(folder))
    with pytest.raises(SystemExit) as exit_info:  # a tabular teacher given to LeNet5 presets
        main(["--config", str(write_config(tmp_path)), "--teacher", str(ROOT / "checkpoints/digits_mlp.ckpt")])
    assert exit_info.value.code == 2 and not ran
    err = capsys.readouterr().err
    assert "student 'lenet5-s1' cannot be built from the teacher" in err and "(mlp, input shape [64])" in err
    assert "The preset 'lenet5-s1' is for lenet5 networks" in err and len(err.strip().splitlines()) == 1


def test_help_describes_the_command_in_whole_sentences(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    said = " ".join(capsys.readouterr().out.split())
    assert "generators, students, baselines and other methods, scored on real test data:" in said
    assert "evaluated on real:" not in said  # the docstring's first line, cut where it wrapped
