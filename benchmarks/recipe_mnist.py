"""What each part of the data-free recipe buys on full MNIST: the ablation behind configs/mnist/pipeline.yaml.

A lean loop around kegnet_pl's own parts (the shipped 99.31% LeNet5 teacher, ``build_generator``, ``Decoder``, the
KegNet losses, ``compress_with_report``, ``distillation_loss``), without Lightning, so that one variant costs
seconds on a GPU. Two commands:

``gen``: train KegNet generator-decoder pairs against the frozen teacher (one-hot labels, batch 256, Adam 1e-3,
loss ``l_cls + l_dec + beta * l_div``, optionally ``- act * mean|f|`` (DAFL's activation loss on the teacher's
features) and ``+ tv * TV(x)`` (a total-variation prior)) and save the generators' weights::

    python benchmarks/recipe_mnist.py gen --gen-steps 1200 --gens runs/recipe/g1200.pt

``distill``: compress the teacher into a student (a preset name or a JSON rank spec) and distil it for
``--steps`` steps of ``--batch`` fresh samples (Adam ``--lr`` decaying to 0, cosine; KL at temperature ``--T``;
``--optimizer sgd --schedule constant --weight-decay 1e-4 --kd l1`` for DFAD's student recipe),
then print and append to ``--out`` one JSON line with the Tucker-only and final accuracy on the 10,000 real
MNIST test images. The real images only score the student; the ``real`` source (the 55,000 training images)
gives the ceiling that data-free distillation can reach with the same steps::

    python benchmarks/recipe_mnist.py distill --source kegnet --gens runs/recipe/g1200.pt --student lenet5-s3
    python benchmarks/recipe_mnist.py distill --source uniform --student lenet5-s3
    python benchmarks/recipe_mnist.py distill --source real --student lenet5-s3

Variants: ``--source mix`` replaces ``--noise-fraction`` of every generator batch by U(-1, 1) noise (what
``StudentModule(noise_fraction=...)`` does); ``--mine K`` draws K batches' worth of samples and trains on the
``--batch`` of them the student follows worst (highest KL from the teacher); ``--adv L`` trains the generators during
distillation against ``l_cls - L * KL(teacher || student)`` (Adam ``--adv-lr``), a DFAD-like push towards the
student's errors; ``--mixup A`` trains on convex mixtures ``lam * x_i + (1 - lam) * x_j`` of the batch's samples
(``lam ~ Beta(A, A)`` per sample, the teacher labelling each mixture); ``--shift P`` / ``--rotate D`` move each
sample by up to P pixels / turn it by up to D degrees (border values fill the edges). Every line also holds ``val``,
the accuracy on the 5,000 training images held out as the teacher's validation split: recipe choices are read from
``val``, and ``acc`` (the 10,000 test images) only scores them; ``per_class`` holds the test accuracy per digit.
``--strokes F`` gives that share of every batch to random pen strokes (:class:`kegnet_pl.data.sources.Strokes`; the
source fills the rest: ``--source mix --noise-fraction 0.5 --strokes 0.25`` is 37.5% generators, 37.5% U(-1, 1) and
25% strokes, the pipeline's recipe); ``--dfad F`` gives that share to a DFAD generator
(:class:`kegnet_pl.nets.generators.DFADGeneratorNet`, its MNIST settings) trained alongside, one Adam step every
``--dfad-every`` student steps, to maximise the student-teacher L1 gap on its samples (the shares: ``--source mix
--noise-fraction 0.5 --strokes 0.25 --dfad 0.25`` is 25% each of generators, U(-1, 1), strokes and the adversary);
``--feat``, ``--freeze``, ``--kd``, ``--contrast``/``--brightness``, ``--source impress`` and ``gen --snapshots`` are
the other changes measured in the README ("What the students miss"); ``--ink``, ``--gen-kind strokes`` and ``--mine``
with strokes those of "What the generators add to pen strokes". ``--device cuda`` runs on a GPU. Needs
``make data``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kegnet_pl.compression import compress_with_report
from kegnet_pl.data.noise import sample_labels
from kegnet_pl.data.sources import Strokes, read_generator_checkpoint, segment_distances, strip_prefix
from kegnet_pl.data.vision import MNISTDataModule
from kegnet_pl.loading import load_classifier_and_spec
from kegnet_pl.losses import classification_loss, decoder_loss, dfad_discrepancy, distillation_loss, diversity_loss
from kegnet_pl.nets.generators import Decoder, DFADGeneratorNet, build_generator
from kegnet_pl.nets.registry import build_classifier, classifier_names

SHAPE = (1, 32, 32)
DFAD_NOISE = 100  # DFAD's MNIST z
PAPER, INK = -0.4242, 2.8215  # blank paper and full ink after MNIST's normalisation (0.1307, 0.3081)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cmd", choices=["gen", "distill"])
    p.add_argument("--teacher", default="checkpoints/mnist_lenet5.ckpt")
    p.add_argument("--data", default="data", help="folder holding MNIST/raw (make data)")
    p.add_argument(
        "--gens",
        default="runs/recipe/gens.pt",
        help="generator weights: written by gen, read by distill (or a generator stage's last.ckpt)",
    )
    p.add_argument("--gen-ids", default="0,1,2,3,4", help="which generators gen trains (seeds 1000 + id)")
    p.add_argument("--gen-steps", type=int, default=600)
    p.add_argument("--pool", type=int, default=12800, help="impress: how many data impressions to synthesise")
    p.add_argument("--inv-steps", type=int, default=200, help="impress: Adam steps on each batch of impressions")
    p.add_argument("--inv-lr", type=float, default=0.05, help="impress: Adam learning rate on the pixels")
    p.add_argument("--inv-T", type=float, default=20.0, help="impress: temperature of the teacher's softmax")
    p.add_argument("--gen-keys", default="", help="distill: only the saved generators whose key matches this regex")
    p.add_argument("--snapshots", type=int, default=1, help="gen: also save each generator at K evenly spaced steps")
    p.add_argument("--beta", type=float, default=0.0, help="weight of the diversity loss")
    p.add_argument("--act", type=float, default=0.0, help="weight of DAFL's activation loss -mean|features|")
    p.add_argument("--tv", type=float, default=0.0, help="weight of a total-variation prior on the images")
    p.add_argument("--gen-kind", default="image", choices=["image", "strokes"], help="gen and distill: generator kind")
    p.add_argument(
        "--ink",
        action="store_true",
        help="gen and distill: the generators draw ink on paper (their standardised output x mapped to background + "
        "(ink - background) * sigmoid(2x - 3), at MNIST's normalised levels: mostly blank, ink where x is high)",
    )
    p.add_argument(
        "--student",
        default="lenet5-s3",
        help='a preset, a JSON rank spec (e.g. {"conv3": [11, 7]}) or a classifier trained from scratch (lenet5-half)',
    )
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--optimizer", default="adam", choices=["adam", "sgd"], help="distill: the student's (sgd: momentum 0.9)"
    )
    p.add_argument("--weight-decay", type=float, default=0.0, help="distill: the student optimizer's weight decay")
    p.add_argument("--schedule", default="cosine", choices=["cosine", "constant"], help="distill: learning rate decay")
    p.add_argument("--source", default="kegnet", choices=["kegnet", "mix", "uniform", "normal", "real", "impress"])
    p.add_argument("--noise-fraction", type=float, default=0.5, help="mix: share of every batch that is U(-1, 1)")
    p.add_argument("--labels", default="uniform", choices=["uniform", "onehot"], help="labels fed to generators")
    p.add_argument("--adv", type=float, default=0.0)
    p.add_argument("--adv-lr", type=float, default=1e-4)
    p.add_argument("--mine", type=int, default=1)
    p.add_argument("--T", type=float, default=1.0)
    p.add_argument("--kd", default="kl", choices=["kl", "l1", "mse"], help="distillation loss: KL at --T, or on logits")
    p.add_argument("--mixup", type=float, default=0.0, help="Beta(A, A) mixing of the batch's samples; 0: off")
    p.add_argument("--shift", type=float, default=0.0, help="random translation of each sample, up to P pixels")
    p.add_argument("--rotate", type=float, default=0.0, help="random rotation of each sample, up to D degrees")
    p.add_argument("--feat", type=float, default=0.0, help="weight of layer-wise feature matching with the teacher")
    p.add_argument("--freeze", action="store_true", help="train only the compressed layers, keep the teacher's others")
    p.add_argument("--contrast", type=float, default=0.0, help="scale each sample by up to this factor either way")
    p.add_argument("--brightness", type=float, default=0.0, help="shift each sample by up to this much either way")
    p.add_argument("--strokes", type=float, default=0.0, help="share of every batch replaced by random pen strokes")
    p.add_argument(
        "--dfad",
        type=float,
        default=0.0,
        help="share of every batch from a DFAD generator trained alongside to maximise the student-teacher L1 gap",
    )
    p.add_argument("--dfad-every", type=int, default=5, help="dfad: student steps per generator step (DFAD: 5)")
    p.add_argument("--dfad-width", type=int, default=64, help="dfad: channels of its generator's last block (DFAD: 64)")
    p.add_argument("--dfad-lr", type=float, default=1e-3, help="dfad: Adam learning rate of its generator (DFAD: 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tag", default="")
    p.add_argument("--out", default="runs/recipe/results.jsonl")
    return p.parse_args()


def mnist(root: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``split`` of full MNIST: ``train`` (55,000), ``val`` (the last 5,000 training images) or ``test``."""
    dm = MNISTDataModule(root=root, batch_size=1000, val_size=5000)
    dm.prepare_data()
    dm.setup("test" if split == "test" else "fit")
    loader = {"train": dm.train_dataloader, "val": dm.val_dataloader, "test": dm.test_dataloader}[split]()
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


class StrokeGenerator(torch.nn.Module):
    """``--gen-kind strokes``: a generator that draws ``strokes`` pen strokes for a label and a noise vector: an MLP
    gives every stroke's end points (in the middle 70% of the image) and half-width (0.5 to 1.5 pixels), rendered
    as ink on blank paper (MNIST's normalised levels) with a soft edge so that the teacher's gradient reaches them."""

    def __init__(self, classes: int = 10, noise: int = 10, strokes: int = 4, units: int = 128) -> None:
        super().__init__()
        self.strokes = strokes
        self.net = torch.nn.Sequential(
            torch.nn.Linear(classes + noise, units),
            torch.nn.BatchNorm1d(units),
            torch.nn.ReLU(),
            torch.nn.Linear(units, units),
            torch.nn.BatchNorm1d(units),
            torch.nn.ReLU(),
            torch.nn.Linear(units, strokes * 5),
        )

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        n, (_, height, width) = len(y), SHAPE
        p = self.net(torch.cat([y, z], 1)).view(n, self.strokes, 5)
        size = torch.tensor([width - 1.0, height - 1.0], device=y.device)
        ends = (0.15 + 0.7 * torch.sigmoid(p[..., :4])).view(n, self.strokes, 2, 2) * size
        half = 0.5 + torch.sigmoid(p[..., 4])
        distance = segment_distances(ends, height, width)
        cover = torch.sigmoid(2 * (half[:, :, None, None] + 0.5 - distance))  # about Strokes' ramp, but smooth
        ink = 1 - (1 - cover).prod(1)  # the union of the strokes
        return (PAPER + (INK - PAPER) * ink)[:, None]


def make_generator(a: argparse.Namespace) -> torch.nn.Module:
    return StrokeGenerator() if a.gen_kind == "strokes" else build_generator(SHAPE, 10, 10)


class InkOnPaper(torch.nn.Module):
    """``--ink``: a generator's standardised images as ink on blank paper, at MNIST's normalised levels."""

    def __init__(self, generator: torch.nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return PAPER + (INK - PAPER) * torch.sigmoid(2 * self.generator(y, z) - 3)


def train_generators(a: argparse.Namespace, teacher: torch.nn.Module) -> None:
    out = {}
    for g in (int(i) for i in a.gen_ids.split(",")):
        torch.manual_seed(1000 + g)
        net, dec = make_generator(a).to(a.device), Decoder(SHAPE, 10, extra_layers=1).to(a.device)
        gen = InkOnPaper(net) if a.ink else net
        opt = torch.optim.Adam([*gen.parameters(), *dec.parameters()], lr=1e-3)
        start = time.time()
        every = max(1, a.gen_steps // a.snapshots)
        for step in range(a.gen_steps):
            if a.snapshots > 1 and step and step % every == 0:
                out[f"{g}@{step}"] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            y = F.one_hot(torch.randint(10, (256,), device=a.device), 10).float()
            z = torch.randn(256, 10, device=a.device)
            x = gen(y, z)
            features = teacher.forward_features(x)
            loss = classification_loss(teacher.forward_head(features), y) + decoder_loss(dec(x), z)
            if a.act:
                loss = loss - a.act * features.abs().mean()
            if a.tv:
                tv = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
                loss = loss + a.tv * tv
            if a.beta:
                loss = loss + a.beta * diversity_loss(x, z)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"generator {g}: loss {loss.item():.4f}, {time.time() - start:.0f} s", flush=True)
        out[g] = {k: v.cpu() for k, v in net.state_dict().items()}
    Path(a.gens).parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, a.gens)


def per_sample_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    log_s, log_t = F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1)
    return F.kl_div(log_s, log_t, reduction="none", log_target=True).sum(1)


STROKES = Strokes(background=PAPER, ink=INK)
STROKES.bind(SHAPE, 10)


def strokes(n: int, device: str) -> torch.Tensor:
    """``n`` images of random pen strokes on blank paper at MNIST's normalised levels (:class:`Strokes`)."""
    return STROKES.sample(n, torch.Generator().manual_seed(int(torch.randint(2**31, ()))), device)


def augment(a: argparse.Namespace, x: torch.Tensor) -> torch.Tensor:
    """``x`` moved by up to ``a.shift`` pixels and turned by up to ``a.rotate`` degrees, then mixed with a shuffled
    copy of itself at ``lam ~ Beta(a.mixup, a.mixup)``, each per sample; ``x`` itself when all three are 0."""
    n = len(x)
    if a.shift or a.rotate:
        angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(a.rotate)
        move = (torch.rand(n, 2, device=x.device) * 2 - 1) * (2 * a.shift / x.shape[-1])
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([torch.stack([cos, -sin, move[:, 0]], 1), torch.stack([sin, cos, move[:, 1]], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    if a.contrast or a.brightness:
        scale = torch.exp((torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * math.log(max(a.contrast, 1.0)))
        x = x * scale + (torch.rand(n, 1, 1, 1, device=x.device) * 2 - 1) * a.brightness
    if a.mixup:
        lam = torch.distributions.Beta(a.mixup, a.mixup).sample((n, 1, 1, 1)).to(x.device)
        x = lam * x + (1 - lam) * x[torch.randperm(n, device=x.device)]
    return x


def impressions(a: argparse.Namespace, teacher: torch.nn.Module) -> torch.Tensor:
    """Data impressions (Nayak et al., ICML 2019): pixels optimised so that the teacher's softmax at ``--inv-T``
    matches soft targets drawn from a Dirichlet whose concentration is beta times the class similarity that the
    teacher's last layer holds (beta 1 and 0.1 for half the pool each)."""
    w = teacher.fc2.weight
    w = w / w.norm(dim=1, keepdim=True)
    sim = w @ w.T
    sim = (sim - sim.min(1, keepdim=True).values) / (sim.max(1, keepdim=True).values - sim.min(1, keepdim=True).values)
    sim = sim.clamp_min(1e-3)
    out, start, batch = [], time.time(), 512
    for i in range(0, a.pool, batch):
        n = min(batch, a.pool - i)
        k = torch.randint(10, (n,), device=a.device)
        beta = torch.where(torch.arange(n, device=a.device) % 2 == 0, 1.0, 0.1)[:, None]
        y = torch.distributions.Dirichlet(beta * sim[k]).sample()
        x = (torch.rand(n, *SHAPE, device=a.device) * 2 - 1).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=a.inv_lr)
        for _ in range(a.inv_steps):
            loss = -(y * F.log_softmax(teacher(x) / a.inv_T, 1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(x.detach())
        print(f"  impressions {i + n}/{a.pool}: loss {loss.item():.4f}, {time.time() - start:.0f} s", flush=True)
    return torch.cat(out)


def generator_states(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """Generator state dicts by key: from ``gen``'s file, or from a ``kegnet fit`` generator checkpoint (``.ckpt``,
    e.g. a pipeline run's ``seed0/generator/checkpoints/last.ckpt``; keys ``0``, ``1``, ...)."""
    if not path.endswith(".ckpt"):
        return torch.load(path, map_location="cpu")
    loaded = read_generator_checkpoint(path)
    count = int(loaded["hparams"]["n_generators"])
    return {str(g): strip_prefix(loaded["state"], f"generators.{g}.") for g in range(count)}


def distill(a: argparse.Namespace, teacher: torch.nn.Module) -> None:
    dev = a.device
    test_x, test_y = mnist(a.data, "test")
    val_x, val_y = mnist(a.data, "val")
    real = mnist(a.data, "train")[0].to(dev) if a.source == "real" else None
    if a.source == "impress":
        real = impressions(a, teacher)
    gens = []
    if a.source in ("kegnet", "mix"):
        for path in a.gens.split(","):
            for key, state in generator_states(path).items():
                if a.gen_keys and not re.fullmatch(a.gen_keys, str(key)):
                    continue
                gen = make_generator(a)
                gen.load_state_dict(state)
                gens.append((InkOnPaper(gen) if a.ink else gen).eval().to(dev))
    gen_opt = None
    if a.adv:
        for gen in gens:
            gen.train()
        gen_opt = torch.optim.Adam([q for gen in gens for q in gen.parameters()], lr=a.adv_lr)
    adversary = adversary_opt = None
    if a.dfad:  # DFAD's generator (its MNIST settings), trained against the student while it learns
        adversary = DFADGeneratorNet(SHAPE, DFAD_NOISE, a.dfad_width).to(dev).train()
        adversary_opt = torch.optim.Adam(adversary.parameters(), lr=a.dfad_lr)
    if a.student in classifier_names():  # an architecture trained from scratch (lenet5-half), as StudentModule does
        student = build_classifier(a.student, SHAPE, 10)
        params = sum(q.numel() for q in student.parameters())
    else:
        spec = json.loads(a.student) if a.student.startswith("{") else a.student
        student, report = compress_with_report(copy.deepcopy(teacher), spec)
        params = report.params_after
    student.to(dev)
    for module in student.children():
        module.requires_grad_(not a.freeze or isinstance(module, torch.nn.Sequential))
    trained = [q for q in student.parameters() if q.requires_grad]
    if a.optimizer == "sgd":  # DFAD's student optimizer (momentum 0.9)
        opt = torch.optim.SGD(trained, lr=a.lr, momentum=0.9, weight_decay=a.weight_decay)
    else:
        opt = torch.optim.Adam(trained, lr=a.lr, weight_decay=a.weight_decay)
    layers = [name for name, _ in teacher.named_children()][:-1]  # every layer but the head (the logits' own)
    feats: dict[str, dict[str, torch.Tensor]] = {"s": {}, "t": {}}
    if a.feat:
        for key, net in (("s", student), ("t", teacher)):
            for name in layers:
                getattr(net, name).register_forward_hook(
                    lambda _m, _i, out, key=key, name=name: feats[key].__setitem__(name, out)
                )
    decay = (lambda s: 0.5 * (1 + math.cos(math.pi * s / a.steps))) if a.schedule == "cosine" else (lambda s: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, decay)

    def draw(n: int, grad: bool = False):
        if a.source in ("real", "impress"):
            return real[torch.randint(len(real), (n,), device=dev)], None
        if a.source == "uniform":
            return torch.rand(n, *SHAPE, device=dev) * 2 - 1, None
        if a.source == "normal":
            return torch.randn(n, *SHAPE, device=dev), None
        if a.source == "mix":
            noise = int(n * a.noise_fraction)
            x, y = generated(n - noise, grad)
            return torch.cat([x, torch.rand(noise, *SHAPE, device=dev) * 2 - 1]), y
        return generated(n, grad)

    def generated(n: int, grad: bool = False):
        y = sample_labels(n, 10, a.labels, None).to(dev)
        z = torch.randn(n, 10, device=dev)
        sizes = [n // len(gens) + (i < n % len(gens)) for i in range(len(gens))]
        with torch.set_grad_enabled(grad):
            parts, start = [], 0
            for gen, m in zip(gens, sizes, strict=True):
                parts.append(gen(y[start : start + m], z[start : start + m]))
                start += m
        return torch.cat(parts), y

    def predict(images: torch.Tensor) -> torch.Tensor:
        """The student's classes for ``images``, in eval mode, 1,000 at a time."""
        student.eval()
        with torch.no_grad():
            pred = torch.cat(
                [student(images[i : i + 1000].to(dev)).argmax(1).cpu() for i in range(0, len(images), 1000)]
            )
        student.train()
        return pred

    def accuracy(images: torch.Tensor = test_x, labels: torch.Tensor = test_y) -> float:
        return (predict(images) == labels).sum().item() / len(images)

    def per_class() -> list[float]:
        pred = predict(test_x)
        return [round((pred[test_y == c] == c).float().mean().item(), 4) for c in range(10)]

    tucker = accuracy()
    start = time.time()
    for step in range(a.steps):
        if gen_opt is not None:
            x, y = draw(a.batch, grad=True)
            t = teacher(x)
            gen_loss = classification_loss(t, y) - a.adv * per_sample_kl(student(x), t).mean()
            gen_opt.zero_grad()
            gen_loss.backward()
            gen_opt.step()
        n = a.batch * a.mine
        m = int(n * a.strokes)  # the strokes' share of the batch; the source (and mix's shares) fill the rest
        k = int(n * a.dfad)  # the adversary's share
        if k and step % a.dfad_every == 0:
            x = adversary(torch.randn(k, DFAD_NOISE, device=dev))
            adversary_loss = -dfad_discrepancy(student(x), teacher(x))
            adversary_opt.zero_grad()
            adversary_loss.backward()
            adversary_opt.step()
        x = draw(n - m - k)[0].detach()
        if m:
            x = torch.cat([x, strokes(m, dev)])
        if k:
            with torch.no_grad():
                x = torch.cat([x, adversary(torch.randn(k, DFAD_NOISE, device=dev))])
        x = augment(a, x)
        if a.mine > 1:
            with torch.no_grad():
                x = x[per_sample_kl(student(x), teacher(x)).topk(a.batch).indices]
        with torch.no_grad():
            t = teacher(x)
        s_logits = student(x)
        if a.kd == "kl":
            loss = distillation_loss(s_logits, t, a.T)
        elif a.kd == "l1":
            loss = F.l1_loss(s_logits, t)
        else:
            loss = F.mse_loss(s_logits, t)
        if a.feat:
            loss = loss + a.feat * sum(
                F.mse_loss(feats["s"][n], feats["t"][n]) / feats["t"][n].pow(2).mean().clamp_min(1e-8) for n in layers
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(500, a.steps // 10) == 0:
            print(f"  step {step + 1}: loss {loss.item():.4f}, val accuracy {accuracy(val_x, val_y):.4f}", flush=True)
    result = {
        **vars(a),
        "params": params,
        "tucker": tucker,
        "val": accuracy(val_x, val_y),
        "acc": accuracy(),
        "per_class": per_class(),
        "seconds": round(time.time() - start, 1),
    }
    print(json.dumps(result), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    with open(a.out, "a") as f:
        f.write(json.dumps(result) + "\n")


def main() -> None:
    a = parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    teacher, _ = load_classifier_and_spec(a.teacher)
    teacher.eval().to(a.device)
    for q in teacher.parameters():
        q.requires_grad_(False)
    train_generators(a, teacher) if a.cmd == "gen" else distill(a, teacher)


if __name__ == "__main__":
    main()
