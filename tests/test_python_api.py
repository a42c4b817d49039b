"""The README's "From Python" block runs as written, with tiny budgets: the modules work without ``kegnet``."""

import re
from pathlib import Path

import onnx
from test_data import write_idx_mnist

ROOT = Path(__file__).resolve().parents[1]


def readme_block() -> str:
    section = (ROOT / "README.md").read_text().split("### From Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_python_block_trains_scores_and_exports(tmp_path, monkeypatch):
    code = readme_block()
    tiny = {  # every budget of the block, made tiny; each must be in the block, or this test is stale
        "n_generators=5": "n_generators=2",
        "batch_size=256": "batch_size=8",
        "batches_per_epoch=100": "batches_per_epoch=2",
        "batches_per_epoch=250": "batches_per_epoch=2",
        "max_epochs=10": "max_epochs=1",
        "max_epochs=3": "max_epochs=1",
    }
    for budget, small in tiny.items():
        assert budget in code, budget
        code = code.replace(budget, small)
    code = code.replace("pl.Trainer(", "pl.Trainer(enable_progress_bar=False, ")
    write_idx_mnist(tmp_path / "data" / "MNIST" / "raw")
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md (From Python)", "exec"), namespace)  # the project's own README
    assert sum(p.numel() for p in namespace["student"].student.parameters()) == 15_045  # lenet5-paper-s2
    results = namespace["trainer"].callback_metrics
    assert 0.0 <= float(results["test/acc"]) <= 1.0 and float(results["test/teacher_acc"]) >= 0.0
    model = onnx.load(tmp_path / "runs/python/student.onnx")
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:] == [1, 32, 32]
