"""kegnet-pipeline's runner: stages side by side (--jobs), fit and test in one process, progress and summary."""

import json
import os
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY_PIPELINE

from kegnet_pl.errors import KegnetError
from kegnet_pl.pipeline import Pipeline, Progress, clock, main
from kegnet_pl.stage import arguments_to_test

TINY = {
    **TINY_PIPELINE,
    "baselines": [],
    "latency_threads": 0,  # no timing of the networks: the runs below compare what they trained
}


def write_config(folder: Path, **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**TINY, "out": str(folder / "run"), **overrides}))
    return path


def commands(stage: Path) -> list[str]:
    return [line for line in (stage / "stage.log").read_text().splitlines() if line.startswith("$ ")]


@pytest.mark.slow  # two tiny pipelines: about a minute on 2 idle cores
def test_two_jobs_in_one_process_each_give_the_results_of_one_stage_at_a_time(tmp_path, capsys):
    config = write_config(tmp_path / "new")
    main(["--config", str(config), "--jobs", "2", "--threads", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    new = tmp_path / "new" / "run"

    # progress: stage k of n, elapsed, time left once a stage has finished; the students wait for the generators,
    # then run side by side
    def line(start: str) -> int:
        found = [index for index, text in enumerate(out) if text.startswith(start)]
        assert len(found) == 1, (start, out)
        return found[0]

    generator = line("[1/3] seed0/generator: training (log: ")
    assert out[generator].endswith("(0:00 elapsed)")
    done = line("[1/3] seed0/generator: done in ")
    assert "; 1 of 3 finished  (" in out[done] and " left)" in out[done]
    tucker = line("[2/3] seed0/student1-tucker: evaluating (log: ")
    kegnet = line("[3/3] seed0/student1-kegnet: training (log: ")
    assert generator < done < tucker < kegnet < line("[2/3] seed0/student1-tucker: done in ")
    assert kegnet < line("[3/3] seed0/student1-kegnet: done in ")  # both students started before either finished
    assert any(text.startswith("[") and "test/acc" in text and "3 of 3 finished" in text for text in out)

    # the summary: where everything is, and the command that reruns it; the last line stays the results file
    assert out[-7].startswith("done: 3 stages in ") and out[-7].endswith("up to 2 at a time of 1 torch thread(s)")
    assert out[-6] == f"table:   {new / 'results.md'} (figures: payoff.json, results.json, stages.json)"
    images = out[-5].removeprefix("images:  ").split(", ")
    assert str(new / "samples.png") in images and all(Path(image).is_file() for image in images)
    assert out[-4].startswith(f"stages:  {new}/seed<S>/<stage>/ (config.yaml, stage.log")
    assert out[-3] == f"logs:    tensorboard --logdir {new}"
    assert out[-2].startswith(f"rerun:   kegnet-pipeline --config {config} --jobs 2 --threads 1  (from ")
    assert out[-1] == f"results: {new / 'results.json'}"

    # a trained stage: fit and test in one process, one command in its log, every file it wrote before
    stage = new / "seed0" / "student1-kegnet"
    (header,) = commands(stage)
    assert header.startswith("$ OMP_NUM_THREADS=1 ") and " -m kegnet_pl.stage fit --config " in header
    log = (stage / "stage.log").read_text()
    assert "test/acc" in log  # the test's own report, after the fit's
    # nothing a user cannot act on: Lightning's and jsonargparse's warnings about kegnet's own use, a cloud tip
    for noise in ("LightningCLI's args parameter", "does not round-trip", "LeafSpec", "litlogger"):
        assert noise not in log, noise
    for name in ("config.yaml", "metrics.json", "result.json", "checkpoints/last.ckpt"):
        assert (stage / name).is_file(), name

    # the old way: one stage at a time, a process per fit and per test, at the same thread count: the same numbers
    main(["--config", str(write_config(tmp_path / "old")), "--jobs", "1", "--separate_test", "true", "--threads", "1"])
    capsys.readouterr()
    old = tmp_path / "old" / "run"
    fit, test = commands(old / "seed0" / "student1-kegnet")
    assert " -m kegnet_pl.cli fit " in fit and " -m kegnet_pl.cli test " in test and "--ckpt_path" in test

    def numbers(run: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in json.loads(run.read_text())]

    assert numbers(new / "results.json") == numbers(old / "results.json")
    assert numbers(new / "stages.json") == numbers(old / "stages.json")  # every metric, bit for bit


# --- the scheduler, with stages that only wait -------------------------------------------------------------------
RESULT = {"test/acc": 0.9, "test/teacher_acc": 0.99, "params": 10, "teacher_params": 40, "compression_ratio": 4}


@pytest.fixture
def fake_stages(monkeypatch):
    """Pipeline.run_stage replaced by a short wait that records when each stage ran; a stage named in ``failing``
    raises."""
    record = {"spans": {}, "running": 0, "most": 0, "failing": set(), "threads": {}}
    lock = threading.Lock()

    def fake_stage(self, folder, config, extra, train, threads=None):
        name = str(folder.relative_to(self.out))
        record["threads"][name] = threads
        with lock:
            record["running"] += 1
            record["most"] = max(record["most"], record["running"])
            begin = time.monotonic()
        time.sleep(0.05 if name in record["failing"] else 0.2)
        with lock:
            record["running"] -= 1
            record["spans"][name] = (begin, time.monotonic())
        if name in record["failing"]:
            raise KegnetError(f"stage {folder} failed (exit 1)")
        return dict(RESULT, seconds=0.2)

    monkeypatch.setattr(Pipeline, "run_stage", fake_stage)
    return record


def side_by_side_config(tmp_path: Path) -> Path:
    """Two seeds, a baseline and DFAD (which needs no generators): 10 stages."""
    return write_config(
        tmp_path,
        seeds=[0, 1],
        baselines=["uniform"],
        methods=["kegnet", "dfad"],
        method_configs={"dfad": str(ROOT / "configs/mnist_subset/dfad.yaml")},
    )


def test_jobs_run_stages_side_by_side_after_what_they_need(tmp_path, fake_stages, capsys):
    main(["--config", str(side_by_side_config(tmp_path)), "--jobs", "2"])
    spans = fake_stages["spans"]
    assert len(spans) == 10 and fake_stages["most"] == 2  # never more than --jobs at a time
    for seed in (0, 1):
        generator_end = spans[f"seed{seed}/generator"][1]
        for source in ("tucker", "kegnet", "uniform"):  # they sample the seed's generators
            assert spans[f"seed{seed}/student1-{source}"][0] >= generator_end
    assert spans["seed0/student1-dfad"][0] < spans["seed0/generator"][1]  # DFAD needs no generators: it does not wait
    rows = json.loads((tmp_path / "run" / "results.json").read_text())
    methods = ["teacher", "tucker", "kegnet", "dfad", "uniform"]
    assert [(r["seed"], r["method"]) for r in rows] == [(s, m) for s in (0, 1) for m in methods]  # the table's order


def test_a_stage_that_runs_alone_gets_every_core_and_the_others_share_them(tmp_path, fake_stages, monkeypatch, capsys):
    monkeypatch.setattr("kegnet_pl.pipeline.cpu_cores", lambda: 4)
    config = write_config(tmp_path, baselines=["uniform", "normal"])  # one seed: generators, then 4 that need them
    main(["--config", str(config), "--jobs", "2"])
    assert fake_stages["threads"] == {
        "seed0/generator": 4,  # nothing can start beside it: every core
        **{f"seed0/student1-{source}": 2 for source in ("tucker", "kegnet", "uniform", "normal")},  # two by two
    }
    assert "up to 2 at a time of 2 torch thread(s) (4 for a stage that ran alone)" in capsys.readouterr().out
    fixed = write_config(tmp_path / "fixed", baselines=["uniform", "normal"])
    main(["--config", str(fixed), "--jobs", "2", "--threads", "1"])
    assert set(fake_stages["threads"].values()) == {1}  # --threads fixes every stage's count


def test_one_job_runs_the_stages_in_the_tables_order(tmp_path, fake_stages, capsys):
    main(["--config", str(side_by_side_config(tmp_path))])
    spans = fake_stages["spans"]
    assert fake_stages["most"] == 1
    stages = ["generator", "student1-tucker", "student1-kegnet", "student1-dfad", "student1-uniform"]
    assert sorted(spans, key=lambda name: spans[name][0]) == [f"seed{s}/{stage}" for s in (0, 1) for stage in stages]
    assert "of 1 torch thread" not in capsys.readouterr().out  # one job: torch's own thread count, as before


def test_a_failed_stage_lets_the_running_ones_finish_and_starts_no_other(tmp_path, fake_stages, capsys):
    fake_stages["failing"].add("seed0/generator")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(side_by_side_config(tmp_path)), "--jobs", "2"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"kegnet-pipeline: error: stage {tmp_path / 'run' / 'seed0' / 'generator'} failed")
    assert "seed0/generator failed; waiting for the 1 stage(s) running" in captured.out
    assert set(fake_stages["spans"]) == {"seed0/generator", "seed0/student1-dfad"}  # started together, both ended


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--jobs", "0"], "--jobs must be at least 1, got 0 (--jobs 1 runs one stage at a time)"),
        (["--threads", "0"], "--threads must be at least 1, got 0 (leave it out for CPU cores // jobs)"),
    ],
)
def test_bad_jobs_or_threads_are_one_clear_error(tmp_path, capsys, option, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(write_config(tmp_path)), *option])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"kegnet-pipeline: error: {message}\n"


# --- progress ------------------------------------------------------------------------------------------------
def test_progress_counts_stages_and_estimates_the_time_left_from_those_of_their_kind():
    now, lines = [0.0], []
    kinds = {Path("g"): "generator", Path("t"): "evaluation", Path("k"): "kegnet", Path("u"): "uniform"}
    progress = Progress(kinds, jobs=2, threads=1, echo=lines.append, now=lambda: now[0])
    progress.started(Path("g"), "g: training")
    assert lines[-1] == "[1/4] g: training  (0:00 elapsed)"  # nothing to estimate from yet
    now[0] = 30.0
    progress.finished(Path("g"), "g", {})
    assert lines[-1] == "[1/4] g: done in 0:30; 1 of 4 finished  (0:30 elapsed, about 0:45 left)"  # 3 x 30 s / 2
    progress.started(Path("t"), "t: evaluating")
    progress.started(Path("k"), "k: training")
    assert lines[-1] == "[3/4] k: training  (0:30 elapsed, about 0:45 left)"
    now[0] = 40.0
    progress.finished(Path("t"), "t", {"test/acc": 0.9123})
    # k: a stage of no kind seen yet (the mean of all, 20 s) running for 10 s; u: 20 s; shared by 2 jobs
    assert lines[-1] == "[2/4] t: done in 0:10, test/acc 91.23%; 2 of 4 finished  (0:40 elapsed, about 0:15 left)"
    progress.started(Path("u"), "u: finished before, skipped")
    now[0] = 41.0
    progress.finished(Path("u"), "u", {}, skipped=True)  # no line of its own, no weight in the estimate
    assert len(lines) == 6 and progress.left() == pytest.approx(20 - 11)
    now[0] = 3725.0
    progress.finished(Path("k"), "k", {})
    assert lines[-1].endswith("; 4 of 4 finished  (1:02:05 elapsed, about 0:00 left)")
    assert progress.summary() == "done: 4 stages in 1:02:05 (1 finished before), up to 2 at a time of 1 torch thread(s)"
    assert clock(59.6) == "1:00" and clock(3600) == "1:00:00"


def test_a_resumed_run_estimates_from_the_times_its_finished_stages_recorded():
    """Not from the mean of all: a resumed run's first stages (generators) can take ten times its students'."""
    now, lines = [0.0], []
    kinds = {Path("g0"): "generator", Path("k0"): "kegnet", Path("g1"): "generator", Path("k1"): "kegnet"}
    progress = Progress(kinds, jobs=1, threads=None, echo=lines.append, now=lambda: now[0])
    progress.started(Path("g0"), "g0: finished before, skipped")
    progress.finished(Path("g0"), "g0", {"seconds": 600.0}, skipped=True)
    progress.started(Path("k0"), "k0: finished before, skipped")
    progress.finished(Path("k0"), "k0", {"seconds": 60.0, "test/acc": 0.9}, skipped=True)
    assert progress.left() == pytest.approx(600 + 60)  # the recorded time of each kind
    progress.started(Path("g1"), "g1: training")
    now[0] = 300.0
    progress.finished(Path("g1"), "g1", {})
    assert progress.left() == pytest.approx(60)  # k1: the kegnet stage's recorded 60 s, not the mean of all
    assert lines[-1].endswith("(5:00 elapsed, about 1:00 left)")
    assert progress.summary().startswith("done: 4 stages in 5:00 (2 finished before)")


def test_the_test_after_a_fit_has_the_fits_arguments_and_its_last_checkpoint():
    fit = ["--config", "c.yaml", "--ckpt_path", "run/last.ckpt", "--trainer.max_epochs=2", "--ckpt_path=x.ckpt"]
    assert arguments_to_test(fit) == ["test", "--config", "c.yaml", "--trainer.max_epochs=2", "--ckpt_path", "last"]


def test_a_worker_runs_stage_after_stage_and_reports_each_exit(tmp_path):
    """A stage's error goes to its log and the worker runs the next; a worker that dies reports it."""
    from kegnet_pl.pipeline import Worker

    worker = Worker({**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for name in ("a", "b"):
            log = tmp_path / f"{name}.log"
            assert worker.run(["test", "--config", str(tmp_path / f"{name}.yaml")], log) == (2, True)
            text = log.read_text()
            assert "kegnet: error: " in text and f"{name}.yaml" in text  # its own one-line error, in its own log
        worker.process.kill()
        status, reusable = worker.run(["test", "--config", "c.yaml"], tmp_path / "c.log")
        assert status != 0 and not reusable
    finally:
        worker.close()


def test_a_worker_runs_a_stage_on_the_threads_it_is_given_and_puts_its_own_back(tmp_path, monkeypatch):
    import torch

    from kegnet_pl import stage

    seen = []
    monkeypatch.setattr(stage, "run", lambda _: seen.append((torch.get_num_threads(), os.environ["OMP_NUM_THREADS"])))
    before = torch.get_num_threads()
    wanted = before + 1
    assert stage.run_logged(["fit"], str(tmp_path / "log"), threads=wanted) == 0
    assert seen == [(wanted, str(wanted))]
    assert torch.get_num_threads() == before and os.environ.get("OMP_NUM_THREADS") != str(wanted)
