"""How much the sorted-prefix-sum diversity loss saves in a KegNet generator step (Yoo et al., NeurIPS 2019).

Measures on the CPU (or ``--device cuda``), our :func:`kegnet_pl.losses.diversity_loss` against the released code's
broadcast formula (:func:`kegnet_pl.losses.naive_diversity_loss`):

(a) the diversity loss alone, forward and backward, on 256 samples of 1x32x32 with 10-d noise;
(b) one whole generator training step (MNIST setting with beta = 1: one-hot y uniform over 10 classes,
    z ~ N(0, I), ImageGenerator (1, 32, 32), frozen LeNet5 teacher in eval mode, Decoder with 1 extra layer,
    loss = l_cls + alpha * l_dec + beta * l_div with alpha = beta = 1, one Adam step over the generator and
    decoder parameters), for 1 generator and for 5 independent generator-decoder pairs (each with its own batch,
    backward per pair, one optimiser step), the 5 pairs also vectorised as ``GeneratorModule(vectorize=True)``
    runs them (the same function, :func:`kegnet_pl.nets.ensemble.call_pairs`: generators and decoders vmapped,
    the teacher once on all 5 batches, one backward), and for reference 1 generator without the diversity term;
(c) the peak memory of one such step: each configuration runs in a fresh subprocess that reports its peak
    resident set size during the step (``VmHWM``, reset just before) minus its resident size before the step (on a
    GPU: the peak of ``torch.cuda.max_memory_allocated`` during the step above the memory allocated before it).

Timings interleave the configurations repeat by repeat and report the best (and the median) of ``--repeats``, so a
busy machine affects all of them alike. The last line holds the summary as key=value pairs:
``diversity_speedup`` and ``step_speedup`` (naive time over ours, 1 generator), ``five_generator_cost`` (our
5-generator step over our 1-generator step), ``five_generator_cost_vmap`` (the same, the 5 pairs vectorised) and
``peak_memory_ratio`` (naive peak over ours, 1 generator).

Every step ends by reading its loss back (``.item()``), once, so that a GPU's queued work is inside the timing.

Usage: ``python benchmarks/generator_step.py --batch-size 256 --repeats 5 --threads 2 [--device cuda]``
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kegnet_pl.losses import classification_loss, decoder_loss, diversity_loss, naive_diversity_loss
from kegnet_pl.nets.classifiers import LeNet5
from kegnet_pl.nets.ensemble import call_pairs
from kegnet_pl.nets.generators import Decoder, ImageGenerator

SHAPE = (1, 32, 32)  # MNIST resized to 32x32, the LeNet5 teacher's input
NUM_CLASSES = 10
NOISE_DIM = 10  # the paper's noise size
ALPHA, BETA = 1.0, 1.0  # SVHN's weights; beta = 1 so that the diversity term is in the step
DIVERSITY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None] = {
    "ours": diversity_loss,
    "naive": naive_diversity_loss,
    "none": None,  # the step without the diversity term, for reference
}


def make_step(
    generators: int, loss: str, batch_size: int, seed: int = 0, vectorize: bool = False, device: str = "cpu"
) -> Callable[[], float]:
    """Build ``generators`` generator-decoder pairs, a frozen teacher and an optimiser on ``device``; return one
    training step, the pairs one after another or (``vectorize``) as one batched computation."""
    torch.manual_seed(seed)
    teacher = LeNet5(SHAPE, NUM_CLASSES).eval().requires_grad_(False).to(device)
    pairs = [
        (
            ImageGenerator(NUM_CLASSES, NOISE_DIM, SHAPE).to(device),
            Decoder(SHAPE, NOISE_DIM, extra_layers=1).to(device),
        )
        for _ in range(generators)
    ]
    params = [p for pair in pairs for net in pair for p in net.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    diversity = DIVERSITY[loss]

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        for generator, decoder in pairs:
            y = F.one_hot(torch.randint(NUM_CLASSES, (batch_size,), device=device), NUM_CLASSES).float()
            z = torch.randn(batch_size, NOISE_DIM, device=device)
            x = generator(y, z)
            value = classification_loss(teacher(x), y) + ALPHA * decoder_loss(decoder(x), z)
            if diversity is not None:
                value = value + BETA * diversity(x, z)
            value.backward()  # per pair, so that one pair's graph is freed before the next is built
            total = total + value.detach()
        optimizer.step()
        return total.item()

    def vectorized_step() -> float:
        optimizer.zero_grad(set_to_none=True)
        y = F.one_hot(torch.randint(NUM_CLASSES, (generators, batch_size), device=device), NUM_CLASSES).float()
        z = torch.randn(generators, batch_size, NOISE_DIM, device=device)
        x, logits, z_hat = call_pairs([g for g, _ in pairs], [d for _, d in pairs], teacher, y, z)  # as GeneratorModule
        total = torch.zeros((), device=device)
        for g in range(generators):  # the losses per pair, as GeneratorModule computes them
            value = classification_loss(logits[g], y[g]) + ALPHA * decoder_loss(z_hat[g], z[g])
            if diversity is not None:
                value = value + BETA * diversity(x[g], z[g])
            total = total + value
        total.backward()
        optimizer.step()
        return total.item()

    return vectorized_step if vectorize else step


def make_diversity_call(loss: str, batch_size: int, seed: int = 0, device: str = "cpu") -> Callable[[], float]:
    """Return one forward and backward pass of a diversity loss on generator-sized samples."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, *SHAPE, generator=generator).to(device)
    z = torch.randn(batch_size, NOISE_DIM, generator=generator).to(device)
    diversity = DIVERSITY[loss]
    assert diversity is not None

    def call() -> float:
        leaf = x.clone().requires_grad_(True)
        value = diversity(leaf, z)
        value.backward()
        return value.item()

    return call


def time_interleaved(calls: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every call once to warm up, then ``repeats`` rounds of each in turn; seconds per call."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_probe(generators: int, loss: str, batch_size: int, device: str = "cpu") -> dict[str, float]:
    """In this fresh process: the peak resident memory of one step above the resident memory just before it.

    A tiny step first initialises what every step shares (autograd, kernels); then the peak is reset by writing
    5 to ``/proc/self/clear_refs`` and read back as ``VmHWM``. ``ru_maxrss`` would not do: a child created by
    ``fork`` inherits its parent's maximum, so a large parent would hide the child's own peak. On a GPU the same
    is read from the caching allocator's statistics (device memory, not the host's).
    """
    make_step(generators, loss, batch_size=4, device=device)()
    step = make_step(generators, loss, batch_size, device=device)
    gc.collect()
    if device != "cpu":
        torch.cuda.synchronize()
        before_bytes = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak_bytes = torch.cuda.max_memory_allocated()
        mib = 1024 * 1024
        return {
            "before_mib": before_bytes / mib,
            "peak_mib": peak_bytes / mib,
            "step_mib": (peak_bytes - before_bytes) / mib,
            "reset": True,
        }
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        reset = True
    except OSError:  # without the reset the peak also covers the imports: only an upper bound
        reset = False
    before = _status_kib("VmRSS")
    step()
    peak = _status_kib("VmHWM")  # the high-water mark since the reset (or since this process started)
    return {"before_mib": before / 1024, "peak_mib": peak / 1024, "step_mib": (peak - before) / 1024, "reset": reset}


def measure_memory(configurations: list[tuple[int, str]], args: argparse.Namespace) -> dict[tuple[int, str], float]:
    """Peak step memory (MiB) of each ``(generators, loss)``, each in its own fresh process, all at once.

    Running the probes side by side saves time and changes nothing: each process reports its own peak.
    """
    processes = {}
    for generators, loss in configurations:
        command = [sys.executable, __file__, "--memory-probe", loss, "--generators", str(generators)]
        command += ["--batch-size", str(args.batch_size), "--threads", str(args.threads), "--device", args.device]
        processes[generators, loss] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    results = {}
    for key, process in processes.items():
        out, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"the memory probe {key} failed with exit status {process.returncode}")
        results[key] = json.loads(out.strip().splitlines()[-1])["step_mib"]
    return results


def _row(name: str, times: list[float], reference: list[float] | None = None) -> str:
    best, median = min(times) * 1e3, statistics.median(times) * 1e3
    ratio = f"{min(reference) / min(times):8.1f}x" if reference is not None else " " * 9
    return f"  {name:<34} {best:10.1f} {median:10.1f} {ratio}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256, help="samples per generator batch (the paper: 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per configuration")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="where to run: cpu (default) or cuda")
    parser.add_argument("--memory-probe", choices=sorted(DIVERSITY), help=argparse.SUPPRESS)
    parser.add_argument("--generators", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = args.device
    if device != "cpu" and not torch.cuda.is_available():
        parser.error(f"--device {device}: torch sees no GPU here; use --device cpu")

    if args.memory_probe:
        print(json.dumps(memory_probe(args.generators, args.memory_probe, args.batch_size, device)))
        return

    started = time.perf_counter()
    where = "CPU" if device == "cpu" else torch.cuda.get_device_name()
    print(
        f"KegNet generator step on {where}: batch {args.batch_size}, samples {SHAPE}, noise {NOISE_DIM}, "
        f"{args.threads} threads, torch {torch.__version__}, best and median of {args.repeats} repeats"
    )
    calls = {name: make_diversity_call(name, args.batch_size, device=device) for name in ("ours", "naive")}
    div = time_interleaved(calls, args.repeats)
    steps = time_interleaved(
        {
            "ours x1": make_step(1, "ours", args.batch_size, device=device),
            "naive x1": make_step(1, "naive", args.batch_size, device=device),
            "none x1": make_step(1, "none", args.batch_size, device=device),
            "ours x5": make_step(5, "ours", args.batch_size, device=device),
            "naive x5": make_step(5, "naive", args.batch_size, device=device),
            "ours x5 vmap": make_step(5, "ours", args.batch_size, vectorize=True, device=device),
        },
        args.repeats,
    )
    timed = time.perf_counter()
    header = f"  {'':<34} {'best ms':>10} {'median ms':>10} {'speedup':>9}"
    print("\n(a) diversity loss, forward + backward")
    print(header)
    print(_row("naive (broadcast B x B x features)", div["naive"]))
    print(_row("ours (sorted prefix sums)", div["ours"], div["naive"]))
    print("\n(b) generator training step (generate, teacher, decoder, losses, backward, Adam)")
    print(header)
    print(_row("1 generator, no diversity term", steps["none x1"]))
    print(_row("1 generator, naive diversity", steps["naive x1"]))
    print(_row("1 generator, our diversity", steps["ours x1"], steps["naive x1"]))
    print(_row("5 generators, naive diversity", steps["naive x5"]))
    print(_row("5 generators, our diversity", steps["ours x5"], steps["naive x5"]))
    print(_row("5 generators, ours, vectorised", steps["ours x5 vmap"], steps["ours x5"]))
    five_cost = min(steps["ours x5"]) / min(steps["ours x1"])
    five_cost_vmap = min(steps["ours x5 vmap"]) / min(steps["ours x1"])
    overhead = min(steps["ours x1"]) / min(steps["none x1"])
    naive_overhead = min(steps["naive x1"]) / min(steps["none x1"])
    print(f"  5-generator step / 1-generator step (ours): {five_cost:.2f} looped, {five_cost_vmap:.2f} vectorised")
    print(f"  step with / without the diversity term: ours {overhead:.2f}x, naive {naive_overhead:.2f}x")

    peak = "VmHWM" if device == "cpu" else "torch.cuda.max_memory_allocated"
    print(f"\n(c) peak memory of one step above the memory before it (fresh subprocess each, {peak})")
    print(f"  {'':<34} {'naive MiB':>10} {'ours MiB':>10} {'ratio':>9}")
    configurations = [(generators, loss) for generators in (1, 5) for loss in ("naive", "ours")] + [(1, "none")]
    memory = measure_memory(configurations, args)
    ratios = {}
    for generators in (1, 5):
        naive, ours = memory[generators, "naive"], memory[generators, "ours"]
        ratios[generators] = naive / max(ours, 1e-3)
        name = f"{generators} generator{'s' if generators > 1 else ''}"
        print(f"  {name:<34} {naive:10.1f} {ours:10.1f} {ratios[generators]:8.1f}x")
    print(f"  (1 generator without the diversity term: {memory[1, 'none']:.1f} MiB)")
    finished = time.perf_counter()
    print(
        f"\nbenchmark time {finished - started:.1f} s: timings {timed - started:.1f} s, memory {finished - timed:.1f} s"
    )
    print(
        f"diversity_speedup={min(div['naive']) / min(div['ours']):.2f} "
        f"step_speedup={min(steps['naive x1']) / min(steps['ours x1']):.2f} "
        f"five_generator_cost={five_cost:.2f} five_generator_cost_vmap={five_cost_vmap:.2f} "
        f"peak_memory_ratio={ratios[1]:.2f}"
    )


if __name__ == "__main__":
    main()
