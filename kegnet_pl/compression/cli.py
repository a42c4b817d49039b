"""``kegnet-compress``: size a KegNet student by Tucker-compressing a teacher classifier.

Example::

    kegnet-compress checkpoints/mnist_subset_lenet5.ckpt --preset lenet5-s1
    kegnet-compress lenet5.pth.tar --arch lenet5 --input-shape 1 32 32 --num-classes 10 --preset lenet5-s1
    kegnet-compress --random-init --arch resnet14 --input-shape 3 32 32 --num-classes 10 \\
        --spec '{"layers3.*.conv1": [16, 8]}'

It prints one line per replaced layer (weight shape, ranks, parameters before and after), then, as its last line,
``params_before=... params_after=... ratio=...``. Errors print one line ``kegnet-compress: error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from kegnet_pl.compression.spec import PRESETS, compress_with_report
from kegnet_pl.errors import ConfigError, KegnetError, OneLineParser
from kegnet_pl.loading import SpecMissingError, load_classifier
from kegnet_pl.nets import build_classifier, classifier_names, trust_arch

PROG = "kegnet-compress"


FLAGS = {"arch": "--arch lenet5", "input_shape": "--input-shape 1 32 32", "num_classes": "--num-classes 10"}


def _build_teacher(args: argparse.Namespace) -> nn.Module:
    if args.arch is not None:
        trust_arch(args.arch)  # typed by the user: an import path given here may be imported
    if args.teacher is not None:
        try:
            return load_classifier(
                args.teacher, arch=args.arch, input_shape=args.input_shape, num_classes=args.num_classes
            )
        except SpecMissingError as err:
            flags = " ".join(FLAGS[key] for key in err.absent)
            them = "it" if len(err.absent) == 1 else "them"
            raise ConfigError(
                f"{err.path!r} does not say its {', '.join(err.absent)}; give {them} on the command line, "
                f"for example {flags}"
            ) from err
    missing = [flag for flag, value in (("--arch", args.arch), ("--input-shape", args.input_shape)) if value is None]
    if missing:
        raise ConfigError(f"--random-init needs {' and '.join(missing)} (there is no file to read them from)")
    with torch.random.fork_rng(devices=[]):  # --seed sets the initial weights without touching the caller's RNG
        torch.manual_seed(args.seed)
        return build_classifier(args.arch, args.input_shape, args.num_classes or 10).eval()


def _parse_spec_text(text: str) -> dict:
    try:
        if Path(text).is_file():
            text = Path(text).read_text()
    except OSError:  # a JSON string too long to be a file name
        pass
    try:
        spec = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml
        except ImportError as err:
            raise ConfigError(f"--spec {text!r} is not valid JSON (install PyYAML to give YAML)") from err
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--spec is neither JSON nor YAML ({' '.join(str(err).split())})") from err
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f'--spec must map layer names or patterns to rank rules, e.g. \'{{"conv3": "evbmf"}}\', got {text!r}'
        )
    return dict(spec)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``kegnet-compress``."""
    parser = OneLineParser(
        prog=PROG,
        description="Tucker-compress a teacher classifier into a KegNet student and print its ranks and sizes.",
    )
    parser.add_argument(
        "teacher",
        nargs="?",
        metavar="TEACHER_FILE",
        help="teacher weights (kegnet_pl checkpoint, KegNet .pth.tar or state dict); or use --random-init",
    )
    parser.add_argument(
        "--arch",
        help=f"classifier: {', '.join(classifier_names())} or an importable module:Class, which giving it here "
        "allows to be imported (not needed for a kegnet_pl checkpoint, which records it)",
    )
    parser.add_argument(
        "--input-shape",
        "--input_shape",  # the spelling of the kegnet and kegnet-pipeline commands
        nargs="+",
        metavar="SIZE",
        help="input shape without the batch, e.g. 1 32 32 or '[1,32,32]' (not needed for a kegnet_pl checkpoint)",
    )
    parser.add_argument(
        "--num-classes", "--num_classes", type=int, help="number of classes (not needed for a kegnet_pl checkpoint)"
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", choices=list(PRESETS), help="one of the paper's students")
    which.add_argument(
        "--spec",
        help='JSON or YAML mapping from layer names or glob patterns to rank rules (8, [8, 5], 0.5, "evbmf", '
        '"full", {100: 5}), or a file that holds one',
    )
    parser.add_argument(
        "--random-init", "--random_init", action="store_true", help="no teacher file: size a randomly initialised one"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default: 0)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kegnet-compress`` with ``argv`` (default: the command line); return 0 or exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.input_shape is not None:  # 1 32 32, or the list form of the other commands: [1,32,32]
        text = " ".join(args.input_shape)
        if not re.fullmatch(r"[\[\]\s,0-9]+", text) or not re.search(r"[0-9]", text):
            parser.error(f"--input-shape takes sizes, e.g. 1 32 32 or '[1,32,32]', got {text!r}")
        args.input_shape = [int(size) for size in re.findall(r"[0-9]+", text)]
    if (args.teacher is None) == (not args.random_init):
        parser.error("give either TEACHER_FILE or --random-init" + (", not both" if args.random_init else ""))
    try:
        spec = args.preset if args.preset is not None else _parse_spec_text(args.spec)
        teacher = _build_teacher(args)
        _, report = compress_with_report(teacher, spec, inplace=True)
    except KegnetError as err:
        parser.exit(2, f"{PROG}: error: {' '.join(str(err).split())}\n")
    for line in report.lines():
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
