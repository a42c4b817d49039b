import json
import pathlib

import pytest
import torch

from kegnet_pl.errors import CheckpointError, ConfigError
from kegnet_pl.loading import load_classifier, save_classifier
from kegnet_pl.nets import LeNet5, build_classifier

ROOT = pathlib.Path(__file__).resolve().parents[1]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def lenet():
    torch.manual_seed(0)
    return LeNet5()


def test_authors_model_state_format(tmp_path, lenet):
    path = tmp_path / "lenet5.pth.tar"
    torch.save({"model_state": lenet.state_dict()}, path)
    net = load_classifier(path, arch="lenet5", input_shape=(1, 32, 32), num_classes=10)
    assert_same_weights(net, lenet)
    assert not net.training


def test_plain_state_dict(tmp_path, lenet):
    path = tmp_path / "lenet5.pt"
    torch.save(lenet.state_dict(), path)
    assert_same_weights(load_classifier(path, arch="lenet5", input_shape=(1, 32, 32), num_classes=10), lenet)


def test_kegnet_checkpoint_carries_its_architecture(tmp_path):
    mlp = build_classifier("mlp", (20,), 4, dropout=0.3)
    path = save_classifier(mlp, tmp_path / "mlp.ckpt", "mlp", {"dropout": 0.3})
    net = load_classifier(path)
    assert_same_weights(net, mlp)
    assert net.layers[2].p == 0.3 and net.input_shape == (20,)
    assert not list(tmp_path.glob("*.tmp"))


def test_lightning_checkpoint_from_teacher_module(tmp_path):
    from kegnet_pl.modules import TeacherModule

    module = TeacherModule(arch="mlp", input_shape=(12,), num_classes=3)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "t.ckpt")
    assert_same_weights(load_classifier(tmp_path / "t.ckpt"), module.net)


def test_file_saved_from_cuda_tensors_loads_on_cpu(tmp_path, lenet, monkeypatch):
    path = tmp_path / "gpu.pth.tar"
    # torch.save records each storage's device; record "cuda:0" as a GPU-trained file would.
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"model_state": lenet.state_dict()}, path)
    if not torch.cuda.is_available():  # the file really asks for a GPU: a plain load fails here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)
    net = load_classifier(path, arch="lenet5", input_shape=(1, 32, 32), num_classes=10)
    assert next(net.parameters()).device.type == "cpu"
    assert_same_weights(net, lenet)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint file '.*nope\.pt' does not exist; check the path") as info:
        load_classifier(tmp_path / "nope.pt", arch="lenet5", input_shape=(1, 32, 32), num_classes=10)
    assert "looked for in" not in str(info.value)  # an absolute path needs no folder


def test_missing_relative_file_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """The shipped configs name files relative to the repository's root; run elsewhere, the message says so."""
    from kegnet_pl.pipeline import read_config

    monkeypatch.chdir(tmp_path)
    where = f"(looked for in {str(tmp_path)!r}, the folder the command runs in; the shipped configs run from the"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_classifier("checkpoints/mnist_lenet5.ckpt")
    assert where in str(info.value)
    with pytest.raises(ConfigError, match="config file 'configs/mnist/generator.yaml' does not exist") as info:
        read_config("configs/mnist/generator.yaml")
    assert where in str(info.value)


def test_empty_file(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"'.*empty\.pt' is empty"):
        load_classifier(tmp_path / "empty.pt")


def test_truncated_file(tmp_path, lenet):
    path = tmp_path / "cut.pt"
    torch.save(lenet.state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"'.*cut\.pt' is not a PyTorch checkpoint or is truncated/corrupt"):
        load_classifier(path, arch="lenet5", input_shape=(1, 32, 32), num_classes=10)


def test_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not weights\n" * 10)
    with pytest.raises(CheckpointError, match=r"'.*notes\.txt' is not a PyTorch checkpoint"):
        load_classifier(path)
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        load_classifier(tmp_path / "list.pt")


class _RunsCode:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path, lenet):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    torch.save({"model_state": lenet.state_dict(), "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refused to load '.*evil\.pt'.*could run code"):
        load_classifier(path, arch="lenet5", input_shape=(1, 32, 32), num_classes=10)
    assert not marker.exists()


def test_wrong_architecture_names_file_and_expected_architecture(tmp_path, lenet):
    path = tmp_path / "lenet5.pth.tar"
    torch.save({"model_state": lenet.state_dict()}, path)
    with pytest.raises(
        CheckpointError, match=r"'.*lenet5\.pth\.tar' do not fit the architecture 'resnet14'.*missing keys"
    ):
        load_classifier(path, arch="resnet14", input_shape=(1, 32, 32), num_classes=10)
    with pytest.raises(CheckpointError, match=r"shape mismatch \['fc2.bias: file \(10,\) vs lenet5 \(5,\)"):
        load_classifier(path, arch="lenet5", input_shape=(1, 32, 32), num_classes=5)


def test_checkpoint_architecture_disagreeing_with_request(tmp_path):
    path = save_classifier(build_classifier("mlp", (64,), 10), tmp_path / "mlp.ckpt", "mlp")
    with pytest.raises(CheckpointError, match=r"holds a classifier with arch='mlp', but arch='lenet5' was asked for"):
        load_classifier(path, arch="lenet5")


def test_plain_state_dict_needs_the_architecture(tmp_path, lenet):
    torch.save(lenet.state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="does not say its arch, input_shape, num_classes"):
        load_classifier(tmp_path / "w.pt")


def test_shipped_teachers_match_their_manifest():
    import hashlib

    manifest = json.loads((ROOT / "checkpoints" / "manifest.json").read_text())
    assert {"mnist_subset_lenet5", "digits_mlp", "mnist_lenet5"} <= set(manifest)
    assert manifest["mnist_lenet5"]["test_accuracy"] >= 0.99  # the strong teacher that quality is judged on
    for entry in manifest.values():
        path = ROOT / "checkpoints" / entry["file"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        net = load_classifier(path)
        assert net.num_classes == entry["num_classes"] and list(net.input_shape) == entry["input_shape"]
        assert path.stat().st_size < 1_000_000
