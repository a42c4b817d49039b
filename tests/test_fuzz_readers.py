"""Fuzz every checkpoint reader with mutated files: each either loads or gives the project's one-line error.

The mutations (truncated and bit-flipped bytes, values of the wrong type or size in the hyper-parameters, huge
shapes, wrong key sets, NaN weights, code to import) are made from the shipped teacher and tiny generator and
student checkpoints with a fixed seed, so every run sees the same cases. No traceback, no hang, no code run.
"""

import copy
import io
import json
import random
import signal
import sys
import time
from collections import Counter
from contextlib import nullcontext

import pytest
import torch
from conftest import CRAFTED_MODULE, FIXED_RANKS

from kegnet_pl.checkpointing import AtomicCheckpointIO
from kegnet_pl.compression.cli import main as compress_main
from kegnet_pl.errors import KegnetError
from kegnet_pl.loading import load_classifier
from kegnet_pl.modules import GeneratorModule, StudentModule, TeacherModule
from kegnet_pl.selection import load_stage

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover (installed with scikit-learn)

    def threadpool_limits(limits):
        return nullcontext()


SECONDS_PER_READ = 20
ODD_VALUES = [None, "x", -1, 0, 10**12, 2.5, float("nan"), True, [1, 2], {"a": 1}, (), "os:system"]


def _teacher_module(path):
    return GeneratorModule(teacher=str(path), n_generators=1)


READERS = {
    "load_classifier": lambda path: load_classifier(path),
    "TeacherModule.load_from_checkpoint": lambda path: TeacherModule.load_from_checkpoint(path),
    "GeneratorModule.load_from_checkpoint": lambda path: GeneratorModule.load_from_checkpoint(path),
    "StudentModule.load_from_checkpoint": lambda path: StudentModule.load_from_checkpoint(path),
    "--model.generators": lambda path: StudentModule(generators=str(path), student=FIXED_RANKS, pool_size=8),
    "--model.teacher": _teacher_module,
    "--ckpt_path": lambda path: AtomicCheckpointIO().load_checkpoint(path),
    "kegnet choose": lambda path: load_stage(path),
}
#: The readers of each kind of file (every reader also gets the other kinds' byte-level mutations).
FOR_KIND = {
    "teacher": ["load_classifier", "TeacherModule.load_from_checkpoint", "--model.teacher", "--ckpt_path"],
    "generator": ["GeneratorModule.load_from_checkpoint", "--model.generators", "--ckpt_path", "load_classifier"],
    "student": ["StudentModule.load_from_checkpoint", "--ckpt_path", "load_classifier", "kegnet choose"],
}


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def mutations(bases: dict[str, bytes], code_site) -> list[tuple[str, str, bytes]]:
    """``(kind, description, file bytes)`` of every case, from a fixed seed."""
    rng = random.Random(11)
    cases = []
    for kind, data in bases.items():
        for fraction in (0.0, 0.001, 0.1, 0.5, 0.9, 0.999):
            cases.append((kind, f"truncated to {fraction:.1%}", data[: int(len(data) * fraction)]))
        for flips in (1, 1, 2, 8, 64, 256):
            flipped = bytearray(data)
            for _ in range(flips):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            cases.append((kind, f"{flips} bit(s) flipped", bytes(flipped)))
        checkpoint = torch.load(io.BytesIO(data), weights_only=True)
        hparams = checkpoint["hyper_parameters"]
        for key in sorted(hparams):
            for value in rng.sample(ODD_VALUES, 2):
                changed = copy.deepcopy(checkpoint)
                changed["hyper_parameters"][key] = value
                cases.append((kind, f"hyper_parameters[{key!r}] = {value!r}", _saved(changed)))
        spec_key = "teacher_spec" if "teacher_spec" in hparams else None
        for key in ("arch", "input_shape", "num_classes", "arch_kwargs"):
            for value in [*rng.sample(ODD_VALUES, 3), [10**5, 10**5, 10**5], 10**9, {"units": 10**9}]:
                changed = copy.deepcopy(checkpoint)
                (changed["hyper_parameters"][spec_key] if spec_key else changed["hyper_parameters"])[key] = value
                cases.append((kind, f"{spec_key or 'spec'}[{key!r}] = {value!r}", _saved(changed)))
        for payload, spec in code_site["payloads"].items():
            changed = copy.deepcopy(checkpoint)
            (changed["hyper_parameters"][spec_key] if spec_key else changed["hyper_parameters"]).update(spec)
            cases.append((kind, f"code to run: {payload}", _saved(changed)))
        state = checkpoint["state_dict"]
        first = next(key for key, value in state.items() if value.is_floating_point())
        for name, edit in {
            "NaN weights": lambda s, k: s[k].fill_(float("nan")),
            "infinite weights": lambda s, k: s[k].fill_(float("inf")),
            "huge shape": lambda s, k: s.__setitem__(k, torch.zeros(1).expand(10**6, 10**6)),
            "a weight that is not a tensor": lambda s, k: s.__setitem__(k, "weights"),
            "a weight missing": lambda s, k: s.pop(k),
            "an extra weight": lambda s, k: s.__setitem__("extra.weight", torch.zeros(3)),
            "no weights": lambda s, k: s.clear(),
            "integer weights": lambda s, k: s.__setitem__(k, s[k].long()),
        }.items():
            changed = copy.deepcopy(checkpoint)
            edit(changed["state_dict"], first)
            cases.append((kind, name, _saved(changed)))
        for name, edit in {
            "no state_dict": lambda c: c.pop("state_dict"),
            "no hyper_parameters": lambda c: c.pop("hyper_parameters"),
            "hyper_parameters a list": lambda c: c.__setitem__("hyper_parameters", [1, 2]),
            "state_dict a list": lambda c: c.__setitem__("state_dict", [1, 2]),
            "non-string hyper-parameter key": lambda c: c["hyper_parameters"].__setitem__(5, 5),
            "model class named by the file": lambda c: c["hyper_parameters"].update(
                _class_path=f"{CRAFTED_MODULE}.Module", _instantiator="pytorch_lightning.cli.instantiate_module"
            ),
        }.items():
            changed = copy.deepcopy(checkpoint)
            edit(changed)
            cases.append((kind, name, _saved(changed)))
    for kind in bases:
        cases.append((kind, "a list, not a dictionary", _saved([1, 2, 3])))
        cases.append((kind, "a pickle that runs code", _pickle_that_runs_code(code_site)))
    return cases


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (self.marker,))


def _pickle_that_runs_code(code_site) -> bytes:
    return _saved({"state_dict": {}, "x": _RunsCode(code_site["markers"][0])})


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"a read took more than {SECONDS_PER_READ} s")


def read_once(reader: str, path) -> str:
    """``loaded`` or ``refused``; anything else (a traceback-worthy exception, a hang) fails the test."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_READ)
    try:
        READERS[reader](path)
        return "loaded"
    except KegnetError as err:
        assert "\n" not in str(err) and str(path) in str(err), f"{reader}: not one line naming the file: {err}"
        return "refused"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def compress_once(path, capsys) -> str:
    capsys.readouterr()
    try:
        compress_main([str(path), "--spec", json.dumps(FIXED_RANKS)])
        return "loaded"
    except SystemExit as exit_info:
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert exit_info.code == 2 and len(lines) == 1 and lines[0].startswith("kegnet-compress: error: "), err
        return "refused"


def test_every_reader_loads_or_refuses_every_mutated_file_in_one_line(
    tiny_checkpoints, code_site, tmp_path, monkeypatch, capsys
):
    """Every case through every reader of its kind (byte-level damage through all readers); prints the tally."""
    monkeypatch.syspath_prepend(str(code_site["folder"]))  # the code a file names would be importable
    with threadpool_limits(1):  # numpy's SVD (Tucker) threads only slow down these tiny matrices
        run_every_case(tiny_checkpoints, code_site, tmp_path, capsys)


def run_every_case(tiny_checkpoints, code_site, tmp_path, capsys):
    bases = {kind: tiny_checkpoints[kind].read_bytes() for kind in ("teacher", "generator", "student")}
    cases = mutations(bases, code_site)
    assert len(cases) >= 200
    outcomes: Counter = Counter()
    per_reader: Counter = Counter()
    seconds: Counter = Counter()
    for number, (kind, description, data) in enumerate(cases):
        path = tmp_path / f"case{number}.ckpt"
        path.write_bytes(data)
        reader_gets_all = "[" not in description  # the hyper-parameter edits go to the readers of their kind
        for reader in list(READERS) if reader_gets_all else FOR_KIND[kind]:
            start = time.perf_counter()
            try:
                outcome = read_once(reader, path)
            except Exception as err:
                pytest.fail(f"case {number} ({kind}: {description}) through {reader}: {type(err).__name__}: {err}")
            outcomes[outcome] += 1
            per_reader[reader, outcome] += 1
            seconds[reader] += time.perf_counter() - start
        if kind == "teacher" or reader_gets_all:
            start = time.perf_counter()
            outcome = compress_once(path, capsys)
            seconds["kegnet-compress"] += time.perf_counter() - start
            outcomes[outcome] += 1
            per_reader["kegnet-compress", outcome] += 1
        assert not any(marker.exists() for marker in code_site["markers"]), f"case {number} ({description}) ran code"
        assert CRAFTED_MODULE not in sys.modules, f"case {number} ({description}) imported the crafted module"
    with capsys.disabled():
        print(f"\nfuzz: {len(cases)} mutated files, {sum(outcomes.values())} reads: {dict(outcomes)}")
        for reader in sorted(seconds):
            counts = ", ".join(f"{outcome} {per_reader[reader, outcome]}" for outcome in ("loaded", "refused"))
            print(f"  {reader}: {counts} ({seconds[reader]:.1f} s)")
