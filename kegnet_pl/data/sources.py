"""Sample sources: what makes a student's inputs in a data-free stage.

A source is a small ``nn.Module`` (:class:`SampleSource`) with one job, ``sample(n, generator, device)``: ``n``
inputs of the teacher's input shape, drawn with the random ``generator`` it is given. Any randomness comes
from that generator, so a source is a pure function of it (and of its own weights): the caller keys the
generator by seed, epoch, rank and batch, and a resumed or multi-process run sees the data it should.

Shipped sources: :class:`UniformNoise` and :class:`NormalNoise` (KegNet's baselines), :class:`Strokes` (pen
strokes on blank paper), :class:`KegnetGenerators` (the trained generators of a generator checkpoint),
:class:`Mixture` (shares of a batch from several sources), and :class:`Pool`, which wraps any source and draws from
a fixed set of its samples (the paper's artificial training set). A stage takes one by ``class_path`` in YAML::

    source:
      class_path: Pool
      init_args:
        size: 32000
        source:
          class_path: KegnetGenerators
          init_args: {checkpoint: runs/mnist_subset/generator/checkpoints/last.ckpt, label_distribution: uniform}

Writing a source: subclass :class:`SampleSource`, take every setting as a typed ``__init__`` argument, implement
``sample``, and override ``spec`` if the source reads a file (return the arguments that rebuild it without the
file; its weights come back from the stage's state dict). A source is a module of the stage, so its parameters
and buffers are saved, restored and moved with it. The stage builds its optimiser from the student only and
calls ``sample`` without gradients while ``trainable`` is false; a method that trains its source (a generator
steered by the student, as in DFAD) sets its parameters trainable and calls ``sample`` with gradients on.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from kegnet_pl.data.noise import LabelDistribution, derive_seed, sample_inputs, sample_labels
from kegnet_pl.errors import CheckpointError, ConfigError
from kegnet_pl.nets import Frozen
from kegnet_pl.nets.generators import DFADGeneratorNet, build_generator


class SampleSource(nn.Module):
    """The protocol of a sample source (see the module docstring); subclasses implement :meth:`sample`."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shape: tuple[int, ...] | None = None
        self.num_classes: int | None = None

    def bind(self, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> None:
        """Called once by the stage with its teacher's input shape and class count and its seed, before any
        ``sample``. A source that knows its own shape (a generator) checks it here; the noise sources take it."""
        self.input_shape = tuple(int(size) for size in input_shape)
        self.num_classes = int(num_classes)

    def set_rank(self, rank: int) -> None:
        """Called by the stage with the process's rank before training (a source with state per rank uses it)."""

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` inputs of shape ``(n, *input_shape)`` on ``device``, drawn with ``generator`` (a CPU generator:
        random numbers are drawn on the CPU, so every device sees the same ones)."""
        raise NotImplementedError

    def held_out(self) -> SampleSource:
        """The source of held-out validation samples: the source itself (a :class:`Pool` answers with the source
        it draws from, so that validation never sees the training pool)."""
        return self

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the source's own floating tensors (a trained network's; the default dtype when it holds
        none): what a network source feeds its networks and returns, so that ``64-true`` precision works."""
        tensors = itertools.chain(self.parameters(), self.buffers())
        return next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())

    @property
    def trainable(self) -> bool:
        """Whether any parameter of the source trains (then ``sample`` is called with gradients)."""
        return any(p.requires_grad for p in self.parameters())

    @property
    def size(self) -> int | None:
        """How many distinct samples the source holds (``None``: unbounded)."""
        return None

    def spec(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}`` that rebuild this source without reading a file (checkpoints record it)."""
        raise NotImplementedError(f"{type(self).__name__} does not say how to rebuild it (override spec())")

    def _require_bound(self) -> tuple[int, ...]:
        if self.input_shape is None:
            raise RuntimeError(f"{type(self).__name__}.bind(input_shape, num_classes) must be called before sample()")
        return self.input_shape


class UniformNoise(SampleSource):
    """Inputs from U(-1, 1) at the teacher's input shape: the paper's uniform baseline."""

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        return sample_inputs("uniform", n, self._require_bound(), generator).to(device)

    def spec(self) -> dict[str, Any]:
        return {"class_path": f"{__name__}.UniformNoise", "init_args": {}}


class NormalNoise(SampleSource):
    """Inputs from N(0, 1) at the teacher's input shape: the paper's Gaussian baseline."""

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        return sample_inputs("normal", n, self._require_bound(), generator).to(device)

    def spec(self) -> dict[str, Any]:
        return {"class_path": f"{__name__}.NormalNoise", "init_args": {}}


def read_generator_checkpoint(path: str) -> dict[str, Any]:
    """The hyper-parameters and state dict of a ``GeneratorModule`` checkpoint (read with ``weights_only``)."""
    from kegnet_pl.loading import read_checkpoint

    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters") or {}
    state = checkpoint.get("state_dict")
    if (
        not isinstance(state, dict)
        or not hparams.get("teacher_spec")
        or not all(isinstance(hparams.get(key), int) for key in ("n_generators", "noise_dim"))
        or not any(k.startswith("generators.") for k in state)
    ):
        raise CheckpointError(
            f"{path!r} is not a GeneratorModule checkpoint (no generators and teacher in it); give the "
            "last.ckpt of a 'kegnet fit --config .../generator.yaml' run"
        )
    return {"hparams": hparams, "state": state}


def strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` under ``prefix``, with the prefix removed."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


class KegnetGenerators(SampleSource):
    """Samples of the trained, frozen generators of a ``GeneratorModule`` checkpoint (KegNet, Yoo et al. 2019).

    Each sample draws a label vector y (``label_distribution``) and a noise vector z ~ N(0, I) and is generated
    by one of the chosen generators, in turn: sample ``i`` comes from generator ``use_generators[i % n]``.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        label_distribution: LabelDistribution = "onehot",
        use_generators: list[int] | None = None,
        generator_spec: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            checkpoint: a GeneratorModule checkpoint (``last.ckpt`` of a generator run).
            label_distribution: labels fed to the generators: ``onehot`` (the authors' code) or ``uniform``
                unnormalised U(0,1) soft labels (the paper).
            use_generators: which of the checkpoint's generators to sample from (default: all).
            generator_spec: ``{n_generators, noise_dim, input_shape, num_classes}``, filled in from the checkpoint
                so that the source is rebuilt without it (the weights then come from a state dict); leave unset.
        """
        super().__init__()
        if label_distribution not in ("onehot", "uniform"):
            raise ConfigError(
                f"KegnetGenerators: label_distribution must be 'onehot' or 'uniform', got {label_distribution!r}"
            )
        loaded = read_generator_checkpoint(checkpoint) if checkpoint is not None else None
        if loaded is not None:
            hparams = loaded["hparams"]
            teacher_spec = hparams["teacher_spec"]
            generator_spec = {
                "n_generators": int(hparams["n_generators"]),
                "noise_dim": int(hparams["noise_dim"]),
                "input_shape": [int(size) for size in teacher_spec["input_shape"]],
                "num_classes": int(teacher_spec["num_classes"]),
            }
            self.teacher_spec: dict[str, Any] | None = dict(teacher_spec)
            self.teacher_state: dict[str, torch.Tensor] | None = strip_prefix(loaded["state"], "teacher.net.")
        elif generator_spec is None:
            raise ConfigError("KegnetGenerators needs a generator checkpoint: set its checkpoint to a last.ckpt")
        else:
            self.teacher_spec = self.teacher_state = None
        self.checkpoint = checkpoint
        self.generator_spec = dict(generator_spec)
        self.label_distribution = label_distribution
        shape, classes = tuple(generator_spec["input_shape"]), generator_spec["num_classes"]
        nets = nn.ModuleList(
            build_generator(shape, classes, generator_spec["noise_dim"]) for _ in range(generator_spec["n_generators"])
        )
        if loaded is not None:
            nets.load_state_dict(strip_prefix(loaded["state"], "generators."))
        self.generators = nn.ModuleList(Frozen(net) for net in nets)
        chosen = list(range(len(nets))) if use_generators is None else [int(g) for g in use_generators]
        if not chosen or any(not 0 <= g < len(nets) for g in chosen):
            raise ConfigError(
                f"KegnetGenerators: use_generators={use_generators} must name generators 0..{len(nets) - 1}"
            )
        self.use_generators = chosen
        super().bind(shape, classes)

    @property
    def noise_dim(self) -> int:
        return int(self.generator_spec["noise_dim"])

    def bind(self, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> None:
        """The generators were trained for one teacher shape and class count: the stage's teacher must have them."""
        own_shape, own_classes = tuple(self.generator_spec["input_shape"]), self.generator_spec["num_classes"]
        if tuple(input_shape) != own_shape or num_classes != own_classes:
            where = f" in {self.checkpoint!r}" if self.checkpoint else ""
            raise ConfigError(
                f"the generators{where} were trained for a teacher with {own_classes} classes and input shape "
                f"{own_shape}, but the teacher has {num_classes} classes and input shape {tuple(input_shape)}; "
                "use generators trained against this teacher"
            )

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        labels = sample_labels(n, self.generator_spec["num_classes"], self.label_distribution, generator)
        noise = torch.randn(n, self.noise_dim, generator=generator)
        labels, noise = labels.to(device, self.dtype), noise.to(device, self.dtype)
        return self.generate(labels, noise)

    def generate(self, labels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The samples for given labels and noise: sample ``i`` from generator ``use_generators[i % n]``."""
        n, k = labels.shape[0], len(self.use_generators)
        x = torch.empty(n, *self.input_shape, device=labels.device, dtype=self.dtype)
        for slot, g in enumerate(self.use_generators[:n]):  # every k-th sample from slot on: no mask to read back
            x[slot::k] = self.generators[g](labels[slot::k], noise[slot::k]).to(x.dtype)  # float32 under autocast
        return x

    def spec(self) -> dict[str, Any]:
        return {
            "class_path": f"{__name__}.KegnetGenerators",
            "init_args": {
                "label_distribution": self.label_distribution,
                "use_generators": list(self.use_generators),
                "generator_spec": dict(self.generator_spec),
            },
        }


class Pool(SampleSource):
    """A fixed set of ``size`` samples of another source, drawn once; batches are drawn from it at random.

    This is the paper's artificial training set (KegNet: 6,400 samples per generator, labelled by the teacher).
    How its randomness is keyed: the pool itself is drawn in chunks of 1,024, chunk ``c`` with a generator seeded
    by ``(seed, rank, c)``, so it is the same in every run with the same seed and differs between DDP ranks (each
    rank holds its own pool). A batch picks ``n`` members uniformly at random, with replacement, using the
    generator ``sample`` is given (keyed by the caller by seed, epoch, rank and batch), so resumed runs draw the
    batches an uninterrupted run would. The pool is drawn at the first ``sample`` (or by :meth:`fill`) on the
    caller's device and is not saved in checkpoints: it is rebuilt from its seed. Held-out validation samples come
    from the wrapped source (:meth:`held_out`), never from the pool.
    """

    def __init__(self, source: SampleSource, size: int = 32000, seed: int | None = None) -> None:
        """
        Args:
            source: the source whose samples fill the pool.
            size: samples in the pool (KegNet: 6,400 per generator, 32,000 for 5).
            seed: seed of the pool's contents (default: the stage's seed); each rank draws its own pool from it.
        """
        super().__init__()
        if size <= 0:
            raise ConfigError(f"Pool: size must be positive, got {size}")
        self.source = source
        self.pool_size = int(size)
        self.seed = seed
        self.rank = 0
        self._pool: torch.Tensor | None = None  # a plain attribute: DDP must not broadcast rank 0's pool

    @property
    def size(self) -> int:
        return self.pool_size

    def bind(self, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> None:
        super().bind(input_shape, num_classes, seed)
        self.source.bind(input_shape, num_classes, seed)
        if self.seed is None:
            self.seed = int(seed)

    def held_out(self) -> SampleSource:
        return self.source.held_out()

    def set_rank(self, rank: int) -> None:
        """Draw this rank's pool (a new rank drops a pool drawn for another)."""
        self.source.set_rank(rank)
        if int(rank) != self.rank:
            self.rank, self._pool = int(rank), None

    @torch.no_grad()
    def fill(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The pool, drawn now if it was not (see the class docstring for its seeds)."""
        if self._pool is None or self._pool.device != torch.device(device):
            chunks = []
            if self.seed is None:
                raise RuntimeError("Pool.bind(input_shape, num_classes, seed) must be called before sample()")
            for chunk, start in enumerate(range(0, self.pool_size, 1024)):
                generator = torch.Generator().manual_seed(derive_seed("pool", self.seed, self.rank, chunk))
                chunks.append(self.source.sample(min(1024, self.pool_size - start), generator, device))
            self._pool = torch.cat(chunks)
        return self._pool

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        pool = self.fill(device)
        index = torch.randint(len(pool), (n,), generator=generator).to(pool.device)
        return pool[index]

    def spec(self) -> dict[str, Any]:
        return {
            "class_path": f"{__name__}.Pool",
            "init_args": {"source": self.source.spec(), "size": self.pool_size, "seed": self.seed},
        }


def segment_distances(ends: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Each pixel's distance to each line segment: ``ends`` of shape (n, segments, 2, 2) holds every segment's two
    end points as (x, y) in pixels; the result has shape (n, segments, height, width) and is differentiable in
    ``ends`` (a generator that draws strokes can be trained through it)."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=ends.device), torch.arange(width, device=ends.device), indexing="ij"
    )
    pixels = torch.stack([xs, ys], -1).to(ends.dtype)  # (H, W, 2) as (x, y)
    a, b = ends[:, :, None, None, 0], ends[:, :, None, None, 1]  # (n, segments, 1, 1, 2)
    along = b - a
    t = ((pixels - a) * along).sum(-1) / along.pow(2).sum(-1).clamp_min(1e-6)
    nearest = a + t.clamp(0, 1)[..., None] * along
    return (pixels - nearest).norm(dim=-1)


class Strokes(SampleSource):
    """Images of a few random straight pen strokes on blank paper: a drawn prior, no image of any dataset.

    Each image holds 1 to ``max_strokes`` line segments whose end points fall in the middle ``span`` of the image
    (uniformly), in ``ink`` on a flat ``background`` (every channel alike). A pixel at distance ``d`` from a
    segment takes the share ``min(1, max(0, 1 + w - d))`` of full ink, with ``w`` drawn per stroke from ``width``:
    a stroke is ``2w + 1`` pixels wide at half ink (2 to 4 by default). ``background`` and ``ink`` are input values
    *after* the teacher's normalisation: for MNIST's (0.1307, 0.3081), blank paper 0 is -0.4242 and full ink 1 is
    2.8215.

    Why it exists: on full MNIST with the 99.31% teacher, the most compressed student distilled from U(-1, 1) noise
    or from KegNet's generators misses nearly every real "1" (0 to 2% of them; the nine other digits 82 to 99%), and
    that one class is most of its gap to the real-data ceiling; strokes give the student thin marks on a flat
    background, which none of those sources do (README, "What the students miss").
    """

    def __init__(
        self,
        background: float = -1.0,
        ink: float = 1.0,
        max_strokes: int = 3,
        width: tuple[float, float] = (0.5, 1.5),
        span: tuple[float, float] = (0.2, 0.8),
    ) -> None:
        """
        Args:
            background: the input value of blank paper (after normalisation).
            ink: the input value of a full stroke (after normalisation).
            max_strokes: each image draws 1 to this many strokes (uniformly).
            width: the range of ``w``, a stroke's half-width of full ink in pixels (a one-pixel soft edge follows).
            span: where end points fall, as fractions of the image's height and width.
        """
        super().__init__()
        if int(max_strokes) < 1:
            raise ConfigError(f"Strokes: max_strokes must be at least 1, got {max_strokes}")
        low, high = (float(v) for v in width)
        if not 0 <= low <= high:
            raise ConfigError(f"Strokes: width must be a range [low, high] with 0 <= low <= high, got {list(width)}")
        start, stop = (float(v) for v in span)
        if not 0 <= start < stop <= 1:
            raise ConfigError(f"Strokes: span must be [start, stop] with 0 <= start < stop <= 1, got {list(span)}")
        self.background, self.ink, self.max_strokes = float(background), float(ink), int(max_strokes)
        self.width, self.span = (low, high), (start, stop)

    def bind(self, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> None:
        if len(tuple(input_shape)) != 3:
            raise ConfigError(
                f"Strokes draws images (channels, height, width), but the teacher takes inputs of shape "
                f"{tuple(input_shape)}; use UniformNoise or NormalNoise for other inputs"
            )
        super().bind(input_shape, num_classes, seed)

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        channels, height, width = self._require_bound()
        size = torch.tensor([width, height], dtype=torch.float32)
        start, stop = self.span
        ends = (start + (stop - start) * torch.rand(n, self.max_strokes, 2, 2, generator=generator)) * (size - 1)
        half = self.width[0] + (self.width[1] - self.width[0]) * torch.rand(n, self.max_strokes, generator=generator)
        drawn = torch.randint(1, self.max_strokes + 1, (n, 1), generator=generator)
        used = torch.arange(self.max_strokes)[None] < drawn  # (n, strokes): which strokes an image draws
        distance = segment_distances(ends, height, width)
        cover = (1.0 - (distance - half[:, :, None, None])).clamp(0, 1) * used[:, :, None, None]
        ink = cover.amax(1)[:, None].expand(n, channels, height, width)
        return (self.background + ink * (self.ink - self.background)).to(device)

    def spec(self) -> dict[str, Any]:
        return {
            "class_path": f"{__name__}.Strokes",
            "init_args": {
                "background": self.background,
                "ink": self.ink,
                "max_strokes": self.max_strokes,
                "width": list(self.width),
                "span": list(self.span),
            },
        }


class Mixture(SampleSource):
    """Batches made of several sources at fixed fractions: ``fractions[i]`` of every batch comes from ``sources[i]``.

    A batch of ``n`` takes ``round``-ed counts that sum to ``n`` (largest remainders), drawn from the sources in
    order with the same random generator, so a mixture is as reproducible as its parts. Held-out samples mix the
    sources' own held-out sources at the same fractions. Full MNIST, the 99.31% teacher: KegNet's generator samples
    with half of every batch replaced by U(-1, 1) noise gave every measured student more than either alone (README,
    "Results").
    """

    def __init__(self, sources: list[SampleSource], fractions: list[float] | None = None) -> None:
        """
        Args:
            sources: the sources to mix (two or more).
            fractions: the share of each source in a batch, non-negative, summing to 1 (default: equal shares).
        """
        super().__init__()
        if len(sources) < 2:
            raise ConfigError(f"Mixture: give two or more sources, got {len(sources)}")
        if fractions is None:
            fractions = [1.0 / len(sources)] * len(sources)
        fractions = [float(f) for f in fractions]
        if len(fractions) != len(sources) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ConfigError(
                f"Mixture: fractions must be one non-negative share per source summing to 1, got {fractions} for "
                f"{len(sources)} sources"
            )
        self.sources = nn.ModuleList(sources)
        self.fractions = fractions

    def bind(self, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> None:
        super().bind(input_shape, num_classes, seed)
        for source in self.sources:
            source.bind(input_shape, num_classes, seed)

    def set_rank(self, rank: int) -> None:
        for source in self.sources:
            source.set_rank(rank)

    def held_out(self) -> SampleSource:
        held = [source.held_out() for source in self.sources]
        if all(h is s for h, s in zip(held, self.sources, strict=True)):
            return self
        mixture = Mixture(held, self.fractions)
        mixture.input_shape, mixture.num_classes = self.input_shape, self.num_classes
        return mixture

    def counts(self, n: int) -> list[int]:
        """How many of ``n`` samples each source gives: the fractions rounded by largest remainder."""
        exact = [n * f for f in self.fractions]
        counts = [int(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
        for i in by_remainder[: n - sum(counts)]:
            counts[i] += 1
        return counts

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        parts = [
            source.sample(count, generator, device)
            for source, count in zip(self.sources, self.counts(n), strict=True)
            if count > 0
        ]
        return torch.cat(parts)

    def spec(self) -> dict[str, Any]:
        return {
            "class_path": f"{__name__}.Mixture",
            "init_args": {"sources": [source.spec() for source in self.sources], "fractions": list(self.fractions)},
        }


@contextlib.contextmanager
def batch_statistics(net: nn.Module) -> Iterator[None]:
    """Run ``net``'s BatchNorms on each batch's own statistics, leaving their running statistics (and the modes
    of every module) as they were."""
    norms = [module for module in net.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    saved = [(module.training, [buffer.clone() for buffer in module.buffers()]) for module in norms]
    for module in norms:
        module.train()
    try:
        yield
    finally:
        for module, (training, buffers) in zip(norms, saved, strict=True):
            module.train(training)
            for buffer, value in zip(module.buffers(), buffers, strict=True):
                buffer.copy_(value)


class DFADGenerator(SampleSource):
    """A trainable sample source: DFAD's generator of images from noise z ~ N(0, I) (DAFL's with ``bn_eps=0.8``;
    :class:`~kegnet_pl.modules.dafl.DAFLModule` builds it so)."""

    def __init__(self, noise_dim: int = 100, width: int = 64, bn_eps: float = 1e-5) -> None:
        """
        Args:
            noise_dim: size of z (DFAD's MNIST code and DAFL: 100; DFAD's CIFAR code: 256).
            width: channels of the generator's last block (DFAD and DAFL: 64).
            bn_eps: epsilon of the BatchNorms after the two 3x3 convolutions (DFAD: 1e-5; DAFL: 0.8).
        """
        super().__init__()
        if noise_dim <= 0 or width <= 0 or bn_eps <= 0:
            raise ConfigError(
                f"DFADGenerator: noise_dim, width and bn_eps must be positive, got {noise_dim}, {width} and {bn_eps}"
            )
        self.noise_dim = noise_dim
        self.width = width
        self.bn_eps = float(bn_eps)
        self.net: DFADGeneratorNet | None = None

    def bind(self, input_shape: Sequence[int], num_classes: int, seed: int = 0) -> None:
        """Build the network for the teacher's image shape, initialised from ``seed``."""
        super().bind(input_shape, num_classes, seed)
        if len(self.input_shape) != 3:
            raise ConfigError(f"DFADGenerator makes images, but the teacher takes inputs of shape {self.input_shape}")
        if self.net is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.net = DFADGeneratorNet(self.input_shape, self.noise_dim, self.width, self.bn_eps)

    def sample(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> torch.Tensor:
        """``n`` images from z ~ N(0, I), normalised with the batch's own statistics in every mode: the samples that
        validate a student, and a grid's, are drawn as the ones it trains on (in eval mode, with the running
        statistics, the last BatchNorm would no longer centre and scale each batch). The running statistics
        change in training mode only."""
        self._require_bound()
        z = torch.randn(n, self.noise_dim, generator=generator).to(device, self.dtype)
        if self.net.training:
            return self.net(z)
        with batch_statistics(self.net):
            return self.net(z)

    def spec(self) -> dict[str, Any]:
        return {
            "class_path": f"{__name__}.DFADGenerator",
            "init_args": {"noise_dim": self.noise_dim, "width": self.width, "bn_eps": self.bn_eps},
        }


#: class paths of sources that moved, as checkpoints of earlier versions record them, and where they live now
MOVED = {"kegnet_pl.modules.dfad.DFADGenerator": f"{__name__}.DFADGenerator"}


def _source_classes() -> dict[str, type[SampleSource]]:
    found: dict[str, type[SampleSource]] = {}
    stack = [SampleSource]
    while stack:
        cls = stack.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        stack.extend(cls.__subclasses__())
    return found


def build_source(spec: dict[str, Any]) -> SampleSource:
    """The source a :meth:`SampleSource.spec` describes (nested sources included).

    Only classes already imported as subclasses of :class:`SampleSource` are built: a checkpoint cannot make
    this import a module of its choosing.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("class_path"), str):
        raise CheckpointError(f"a source spec is a {{class_path, init_args}} mapping, got {spec!r}")
    classes = _source_classes()
    cls = classes.get(MOVED.get(spec["class_path"], spec["class_path"]))
    if cls is None:
        raise CheckpointError(
            f"the source {spec['class_path']!r} is not an imported SampleSource (known: {', '.join(sorted(classes))});"
            " import the module that defines it first"
        )

    def build(value: Any) -> Any:
        if isinstance(value, dict) and "class_path" in value:
            return build_source(value)
        if isinstance(value, list) and any(isinstance(item, dict) and "class_path" in item for item in value):
            return [build(item) for item in value]
        return value

    init_args = {key: build(value) for key, value in (spec.get("init_args") or {}).items()}
    return cls(**init_args)


__all__ = [
    "DFADGenerator",
    "KegnetGenerators",
    "Mixture",
    "NormalNoise",
    "Pool",
    "SampleSource",
    "Strokes",
    "UniformNoise",
    "build_source",
    "read_generator_checkpoint",
    "segment_distances",
]
