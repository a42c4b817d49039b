"""Shared fixtures and helpers: tiny configs written to a temporary folder, driven through the real entry points."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from pytorch_lightning import Trainer

ROOT = Path(__file__).resolve().parents[1]
TEACHER = str(ROOT / "checkpoints" / "mnist_subset_lenet5.ckpt")

#: a kegnet-pipeline config at test size: one student, one generator, a few batches of 16 (the shipped teacher)
TINY_PIPELINE = {
    "generator_config": str(ROOT / "configs/mnist_subset/generator.yaml"),
    "student_config": str(ROOT / "configs/mnist_subset/student.yaml"),
    "students": ["lenet5-s1"],
    "baselines": ["uniform"],
    "seeds": [0],
    "generator_args": [
        f"--model.teacher={TEACHER}",
        "--trainer.max_epochs=1",
        "--model.n_generators=1",
        "--data.batch_size=16",
        "--data.batches_per_epoch=2",
    ],
    "student_args": [
        "--trainer.max_epochs=2",
        "--model.pool_size=32",
        "--data.batch_size=16",
        "--data.batches_per_epoch=2",
        "--data.val_batches=1",
    ],
}


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _no_trusted_paths_between_tests():
    """Import paths trusted by one test (through the CLI or trust_arch) are forgotten before the next."""
    from kegnet_pl.nets.registry import untrust_all

    yield
    untrust_all()


@pytest.fixture(scope="module")
def generator_ckpt(tmp_path_factory) -> str:
    """A GeneratorModule checkpoint of two generators against TEACHER, trained two seeded steps of 8 (per module)."""
    from kegnet_pl.data import NoiseDataModule
    from kegnet_pl.modules import GeneratorModule

    folder = tmp_path_factory.mktemp("generators")
    torch.manual_seed(0)
    model = GeneratorModule(teacher=TEACHER, n_generators=2)
    trainer = quiet_trainer(folder, max_steps=2)
    trainer.fit(model, NoiseDataModule(batch_size=8, batches_per_epoch=2, **model.noise_settings()))
    path = folder / "generators.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


def quiet_trainer(tmp_path: Path, **kwargs) -> Trainer:
    """A CPU trainer that writes nothing: no logger, no checkpoints, no progress bar."""
    defaults = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    return Trainer(**{**defaults, **kwargs})


def _set(config: dict, dotted: str, value) -> None:
    node = config
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def tiny_config(
    tmp_path: Path, name: str, model: dict, data: dict, checkpoint: dict | None = None, **overrides
) -> Path:
    """Write a config with TensorBoard logs in ``tmp_path/tb`` and checkpoints (``last.ckpt``) in ``tmp_path/ckpt``.

    ``overrides`` are dotted keys (``"trainer.max_epochs": 2``) set after the defaults.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {"class_path": "TensorBoardLogger", "init_args": {"save_dir": str(tmp_path), "name": "tb"}},
            "callbacks": [
                {
                    "class_path": "ModelCheckpoint",
                    "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True, **(checkpoint or {})},
                }
            ],
        },
        "model": model,
        "data": data,
    }
    for dotted, value in overrides.items():
        _set(config, dotted, value)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def teacher_config(tmp_path: Path, **overrides) -> Path:
    """A tiny MNIST-subset teacher config: 4 training and 2 validation batches; ``model``/``data`` replace those
    sections, other keys are dotted overrides."""
    model = {
        "class_path": "TeacherModule",
        "init_args": {"arch": "lenet5", "input_shape": [1, 32, 32], "num_classes": 10},
    }
    limits = {"trainer.limit_train_batches": 4, "trainer.limit_val_batches": 2, "trainer.limit_test_batches": 2}
    return tiny_config(
        tmp_path,
        "config",
        model=overrides.pop("model", model),
        data=overrides.pop("data", {"class_path": "MNISTSubsetDataModule", "init_args": {"batch_size": 16}}),
        checkpoint={"monitor": "val/acc", "mode": "max"},
        **{**limits, **overrides},
    )


# --- crafted files: code that must never run because a file names it ---------------------------------------------
CRAFTED_MODULE = "kegnet_crafted_mod"
FIXED_RANKS = {"fc2": [4, 4]}  # a LeNet5 student whose ranks need no EVBMF and little SVD (quick to build)


@pytest.fixture
def code_site(tmp_path):
    """A folder holding a module and a torch.hub ``hubconf.py`` that each create a marker file when imported, and the
    architectures a crafted file may name to import them: ``{'folder', 'markers', 'payloads'}``."""
    folder = tmp_path / "site"
    (folder / "hub").mkdir(parents=True)
    import_marker, hub_marker = tmp_path / "imported_module_ran", tmp_path / "hubconf_ran"
    (folder / f"{CRAFTED_MODULE}.py").write_text(
        f"import pathlib\npathlib.Path({str(import_marker)!r}).touch()\nfrom kegnet_pl.nets import LeNet5 as Net\n"
    )
    (folder / "hub" / "hubconf.py").write_text(
        f"import pathlib\npathlib.Path({str(hub_marker)!r}).touch()\n\ndef x(**kwargs):\n    return None\n"
    )
    payloads = {
        "torch.hub:load": {
            "arch": "torch.hub:load",
            "arch_kwargs": {"repo_or_dir": str(folder / "hub"), "model": "x", "source": "local", "trust_repo": True},
        },
        "import side effect": {"arch": f"{CRAFTED_MODULE}:Net", "arch_kwargs": {}},
    }
    import sys

    sys.modules.pop(CRAFTED_MODULE, None)
    yield {"folder": folder, "markers": [import_marker, hub_marker], "payloads": payloads}
    sys.modules.pop(CRAFTED_MODULE, None)  # imported by the tests that allow it


def craft(source: Path | str, target: Path, spec_key: str | None, payload: dict) -> Path:
    """Copy the checkpoint ``source`` to ``target`` with ``payload`` (arch, arch_kwargs) written into its
    hyper-parameters: into ``hyper_parameters[spec_key]`` (e.g. ``teacher_spec``), or at the top for a classifier."""
    checkpoint = torch.load(source, weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    node = hparams[spec_key] if spec_key else hparams
    node.update(payload)
    torch.save(checkpoint, target)
    return target


def module_checkpoint(module, path: Path) -> Path:
    """Save ``module`` as Lightning would (state dict and hyper-parameters, after its ``on_save_checkpoint``)."""
    import pytorch_lightning

    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": pytorch_lightning.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """A generator checkpoint (1 generator) and a student checkpoint made from it, built once per session without
    training: ``{'teacher', 'generator', 'student'}`` paths."""
    from kegnet_pl.modules import GeneratorModule, StudentModule

    folder = tmp_path_factory.mktemp("tiny_checkpoints")
    torch.manual_seed(0)
    generator = module_checkpoint(GeneratorModule(teacher=TEACHER, n_generators=1), folder / "generator.ckpt")
    student = StudentModule(generators=str(generator), student=FIXED_RANKS, pool_size=8)  # no EVBMF: fast
    student = module_checkpoint(student, folder / "student.ckpt")
    return {"teacher": Path(TEACHER), "generator": generator, "student": student}


def training_modes(module, datamodule, **nets: torch.nn.Module) -> dict[str, set[tuple[bool, bool]]]:
    """Fit ``module`` one epoch on the CPU and return, for each of ``nets``, the set of ``(training, output keeps a
    graph)`` seen by its forward calls inside training steps (validation is left out)."""
    import pytorch_lightning as pl

    calls: dict[str, set[tuple[bool, bool]]] = {name: set() for name in nets}
    inside = [False]

    def recorder(name):
        def record(net, inputs, output):
            if inside[0]:
                calls[name].add((net.training, output.requires_grad))

        return record

    class Inside(pl.Callback):
        def on_train_batch_start(self, *args):
            inside[0] = True

        def on_train_batch_end(self, *args):
            inside[0] = False

    handles = [net.register_forward_hook(recorder(name)) for name, net in nets.items()]
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Inside()],
    )
    trainer.fit(module, datamodule=datamodule)
    for handle in handles:
        handle.remove()
    return calls
