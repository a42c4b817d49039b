"""GeneratorModule: frozen teacher, independent generators, resume, DDP noise, TensorBoard and PNG outputs."""

import copy

import numpy
import pytest
import torch
import yaml
from conftest import TEACHER, quiet_trainer, tiny_config
from PIL import Image
from pytorch_lightning import Callback

from kegnet_pl.cli import main
from kegnet_pl.data import NoiseDataModule
from kegnet_pl.errors import CheckpointError, ConfigError
from kegnet_pl.images import CAPTION
from kegnet_pl.loading import save_classifier
from kegnet_pl.modules import GeneratorModule, StudentModule
from kegnet_pl.modules.dafl import DAFLModule
from kegnet_pl.modules.dfad import DFADModule
from kegnet_pl.nets import ResNet14


def pixels(path):
    """A PNG as a (height, width) array of grey levels."""
    return numpy.asarray(Image.open(path).convert("L"))


IMAGES = '--trainer.callbacks+={"class_path": "kegnet_pl.images.SampleImages", "init_args": {"every_n_epochs": 1}}'


def generator_config(tmp_path, **model_args):
    return tiny_config(
        tmp_path,
        "generator",
        model={
            "class_path": "GeneratorModule",
            "init_args": {"teacher": TEACHER, "n_generators": 2, "beta": 1.0, **model_args},
        },
        data={"class_path": "NoiseDataModule", "init_args": {"batch_size": 16, "batches_per_epoch": 3}},
        **{"trainer.max_epochs": 2},
    )


def test_fit_writes_checkpoint_tensorboard_scalars_images_and_png(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    main(["fit", "--config", str(generator_config(tmp_path)), IMAGES])
    images = f"{tmp_path / 'ckpt'}  (samples_gen-all.png, samples_gen0.png, samples_gen1.png)"
    assert f"\n  images           {images}\n" in capsys.readouterr().out  # in the closing summary
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    (events,) = (tmp_path / "tb").rglob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for g in (0, 1):
        assert {f"train/gen{g}/{name}_epoch" for name in ("loss_cls", "loss_dec", "loss_div", "diversity")} <= scalars
        assert f"train/gen{g}/teacher_acc" in scalars
    assert {"samples/gen0", "samples/gen1"} <= set(acc.Tags()["images"])
    pngs = [pixels(tmp_path / "ckpt" / f"samples_gen{g}.png") for g in (0, 1)]
    height, width = pngs[0].shape
    assert (width, height) == (22 + 2 + 8 * 34, 2 + 10 * 34)  # class numbers, 8 noise columns, a row per class
    rows = [pngs[0][2 + 34 * k : 34 * (k + 1), :22] for k in range(10)]  # the margin beside each row of 32x32
    assert all(row.min() < 128 for row in rows)  # a class number drawn beside every row ...
    assert len({row.tobytes() for row in rows}) == 10  # ... and a different one each
    both = pixels(tmp_path / "ckpt" / "samples_gen-all.png")
    assert both.shape == (CAPTION + height, 2 * width + 8)  # every generator, side by side, under its name
    blocks = [both[:, :width], both[:, width + 8 :]]
    for png, block in zip(pngs, blocks, strict=True):
        assert (block[CAPTION:] == png).all() and block[:CAPTION].min() < 128
    assert (blocks[0][:CAPTION] != blocks[1][:CAPTION]).any()  # "gen 0", "gen 1"


def test_a_new_run_with_overwrite_keeps_the_earlier_runs_images(tmp_path, capsys):
    main(["fit", "--config", str(generator_config(tmp_path)), IMAGES, "--trainer.max_epochs", "1"])
    first = {path.name: path.read_bytes() for path in (tmp_path / "ckpt").glob("*.png")}
    assert sorted(first) == ["samples_gen-all.png", "samples_gen0.png", "samples_gen1.png"]
    main(
        ["fit", "--config", str(generator_config(tmp_path)), IMAGES, "--overwrite", "true", "--trainer.max_epochs", "1"]
    )
    assert {name: (tmp_path / "ckpt" / name).read_bytes() for name in first} == first  # nothing replaced
    assert "(samples_gen-all-v1.png, samples_gen0-v1.png, samples_gen1-v1.png)" in capsys.readouterr().out
    resume = ["--ckpt_path", str(tmp_path / "ckpt" / "last-v1.ckpt")]  # the second run goes on under its own names
    main(["fit", "--config", str(generator_config(tmp_path)), IMAGES, "--overwrite", "true", *resume])
    assert not list((tmp_path / "ckpt").glob("*-v2.png"))
    assert {name: (tmp_path / "ckpt" / name).read_bytes() for name in first} == first


def test_teacher_unchanged_frozen_and_in_chosen_mode(tmp_path):
    teacher_file = save_classifier(ResNet14((1, 32, 32)), tmp_path / "resnet.ckpt", "resnet14")
    for mode in ("eval", "train"):
        model = GeneratorModule(teacher=str(teacher_file), n_generators=1, teacher_batchnorm=mode)
        before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
        quiet_trainer(tmp_path, max_steps=2).fit(
            model, NoiseDataModule(batch_size=8, batches_per_epoch=2, **model.noise_settings())
        )
        after = model.teacher.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), mode  # BatchNorm buffers included
        assert model.teacher.net.norm1.training == (mode == "train")
        model.train()
        assert model.teacher.net.norm1.training == (mode == "train")
        assert not any(p.requires_grad for p in model.teacher.parameters())


def test_the_teachers_real_accuracy_uses_its_running_statistics_whatever_the_extraction_mode(tmp_path):
    """With teacher_batchnorm: train the generators see a teacher that normalises by batch statistics; its accuracy
    on real images (test/teacher_acc) is still that of the teacher as trained: eval mode."""
    net = ResNet14((1, 32, 32)).eval()
    for module in net.modules():  # running statistics far from any batch's, so that the two modes disagree
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.fill_(3.0)
    teacher_file = save_classifier(net, tmp_path / "resnet.ckpt", "resnet14")
    model = GeneratorModule(teacher=str(teacher_file), n_generators=1, teacher_batchnorm="train")
    x = torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = net(x).argmax(1)  # labels the eval-mode teacher gets all right
        assert (model.teacher(x).argmax(1) != y).any()  # the extraction's mode does not
    model.log = lambda *args, **kwargs: None
    model.test_step((x, y), 0)
    assert model.test_metrics["real"].compute() == 1.0
    assert model.teacher.net.norm1.training  # the extraction's mode again


def test_optimizer_holds_generators_and_decoders_only():
    model = GeneratorModule(teacher=TEACHER, n_generators=2)
    (group,) = model.configure_optimizers().param_groups
    ids = {id(p) for p in group["params"]}
    assert ids == {id(p) for p in (*model.generators.parameters(), *model.decoders.parameters())}
    assert not ids & {id(p) for p in model.teacher.parameters()}


def test_generators_start_from_different_reproducible_weights():
    a = GeneratorModule(teacher=TEACHER, n_generators=2, seed=3)
    b = GeneratorModule(teacher=TEACHER, n_generators=2, seed=3)
    w = [next(g.parameters()) for g in a.generators]
    assert not torch.equal(w[0], w[1])
    assert torch.equal(w[0], next(b.generators[0].parameters()))


def test_no_two_seeds_share_a_pairs_starting_weights():
    first = {
        seed: [next(g.parameters()) for g in GeneratorModule(teacher=TEACHER, n_generators=3, seed=seed).generators]
        + [next(d.parameters()) for d in GeneratorModule(teacher=TEACHER, n_generators=3, seed=seed).decoders]
        for seed in (0, 1, 2)
    }
    weights = [w for ws in first.values() for w in ws]
    assert len(weights) == 18
    assert not any(torch.equal(a, b) for i, a in enumerate(weights) for b in weights[i + 1 :] if a.shape == b.shape)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    main(["fit", "--config", str(generator_config(straight))])
    split = tmp_path / "split"
    config = generator_config(split)
    main(["fit", "--config", str(config), "--trainer.max_epochs", "1"])
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    a = torch.load(straight / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(split / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(key.startswith("generators.1.") for key in a)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key


def test_checkpoint_alone_is_enough_to_sample(tmp_path):
    teacher_file = save_classifier(ResNet14((1, 32, 32)), tmp_path / "t.ckpt", "resnet14")
    model = GeneratorModule(teacher=str(teacher_file), n_generators=1)
    trainer = quiet_trainer(tmp_path, max_steps=1)
    trainer.fit(model, NoiseDataModule(batch_size=4, batches_per_epoch=1, **model.noise_settings()))
    trainer.save_checkpoint(tmp_path / "gen.ckpt")
    teacher_file.unlink()
    loaded = GeneratorModule.load_from_checkpoint(tmp_path / "gen.ckpt", weights_only=True).eval()
    model.eval()
    y, z = torch.eye(10)[:4], torch.randn(4, 10)
    assert torch.equal(loaded(y, z), model(y, z))
    assert torch.equal(loaded.teacher(loaded(y, z)), model.teacher(model(y, z)))


def test_teacher_that_does_not_fit_the_generator_config():
    with pytest.raises(CheckpointError, match=r"holds a classifier with num_classes=10, but num_classes=5 was asked"):
        GeneratorModule(teacher=TEACHER, num_classes=5)
    with pytest.raises(CheckpointError, match=r"input_shape=\(1, 32, 32\), but input_shape=\(3, 32, 32\) was asked"):
        GeneratorModule(teacher=TEACHER, input_shape=[3, 32, 32])
    spec = {"arch": "lenet5", "input_shape": (1, 32, 32), "num_classes": 10}
    with pytest.raises(ConfigError, match=r"the teacher has 10 classes but the generator config says num_classes=5"):
        GeneratorModule(teacher_spec=spec, num_classes=5)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="n_generators must be positive, got 0"):
        GeneratorModule(teacher=TEACHER, n_generators=0)
    with pytest.raises(ConfigError, match="beta must be >= 0, got -1"):
        GeneratorModule(teacher=TEACHER, beta=-1)


class RecordNoise(Callback):
    def __init__(self, folder):
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            torch.save(batch["noise"].cpu(), f"{self.folder}/noise_rank{trainer.global_rank}.pt")


def test_ddp_ranks_draw_different_noise(tmp_path):
    model = GeneratorModule(teacher=TEACHER, n_generators=1)
    trainer = quiet_trainer(tmp_path, strategy="ddp_spawn", devices=2, max_steps=1, callbacks=[RecordNoise(tmp_path)])
    trainer.fit(model, NoiseDataModule(batch_size=4, batches_per_epoch=4, **model.noise_settings()))
    rank0, rank1 = (torch.load(tmp_path / f"noise_rank{r}.pt") for r in (0, 1))
    assert rank0.shape == rank1.shape == (1, 4, 10)
    assert not torch.allclose(rank0, rank1)


def test_kegnet_test_reports_generators_on_held_out_noise_and_teacher_on_real_data(tmp_path, capsys):
    config = generator_config(tmp_path)
    data = {"batch_size": 16, "batches_per_epoch": 3, "val_batches": 2}
    data["eval_data"] = {"class_path": "MNISTSubsetDataModule", "init_args": {"batch_size": 500}}
    text = yaml.safe_load(config.read_text())
    text["data"]["init_args"] = data
    text["trainer"]["logger"] = False
    text["trainer"]["default_root_dir"] = str(tmp_path)  # where the CLI saves its config.yaml
    config.write_text(yaml.safe_dump(text))
    main(["test", "--config", str(config)])
    out = capsys.readouterr().out
    assert "test/gen1/teacher_acc" in out and "test/gen0/diversity" in out
    teacher = float(next(line.split()[-1] for line in out.splitlines() if line.strip().startswith("test/teacher_acc")))
    assert teacher == pytest.approx(0.974, abs=1e-3)  # the shipped teacher on the subset's test split


def test_grid_samples_leave_the_generators_untouched():
    model = GeneratorModule(teacher=TEACHER, n_generators=2)
    model.train()
    before = {k: v.clone() for k, v in model.generators.state_dict().items()}
    samples = model.grid_samples(columns=3, seed=0)
    assert len(samples) == 2 and samples[0].shape == (10 * 3, 1, 32, 32)
    assert all(torch.equal(before[k], v) for k, v in model.generators.state_dict().items())  # BatchNorm included
    assert all(net.training for net in model.generators)
    assert torch.equal(samples[1], model.grid_samples(columns=3, seed=0)[1])


def test_every_stage_trains_at_64_true_precision(tmp_path):
    """``--trainer.precision 64-true``: the noise batches, the generators' inputs and every source's samples follow
    the model into float64 (they are drawn after Lightning converts a batch, so each stage converts its own)."""
    generator = GeneratorModule(teacher=TEACHER, n_generators=2)
    trainer = quiet_trainer(tmp_path / "gen", max_steps=2, precision="64-true")
    trainer.fit(generator, NoiseDataModule(batch_size=8, batches_per_epoch=2, **generator.noise_settings()))
    trainer.save_checkpoint(tmp_path / "gen.ckpt")
    students = {
        "kegnet": StudentModule(generators=str(tmp_path / "gen.ckpt"), student="lenet5-s1", noise_fraction=0.5),
        "uniform": StudentModule(teacher=TEACHER, student="lenet5-s1", source="uniform"),
        "dfad": DFADModule(teacher=TEACHER, student="lenet5-half"),
        "dafl": DAFLModule(teacher=TEACHER, student="lenet5-half"),
    }
    for name, model in {"generator": generator, **students}.items():
        if name != "generator":
            before = copy.deepcopy(model.student.state_dict())
            data = NoiseDataModule(batch_size=8, batches_per_epoch=2, val_batches=1)
            quiet_trainer(tmp_path / name, max_steps=2, precision="64-true").fit(model, data)
            after = model.student.state_dict()
            assert any(not torch.equal(after[k].float(), v.float()) for k, v in before.items()), name  # it trained
        weights = [p for p in model.parameters() if p.is_floating_point()]
        assert weights and all(p.dtype == torch.float64 for p in weights), name
        assert all(torch.isfinite(p).all() for p in weights), name
