import pytest
import torch

from kegnet_pl.errors import ConfigError
from kegnet_pl.nets import LeNet5, ResNet14, build_classifier, classifier_names, trust_arch


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    ("name", "shape", "params"),
    [
        ("lenet5", (1, 32, 32), 61_706),
        ("resnet14", (3, 32, 32), 172_970),
        ("mlp", (64,), 64 * 100 + 100 + 9 * 10_100 + 1010),
    ],
)
def test_paper_parameter_counts_and_output_shape(name, shape, params):
    net = build_classifier(name, shape, 10)
    assert n_params(net) == params
    assert net(torch.randn(3, *shape)).shape == (3, 10)
    assert net.input_shape == shape and net.num_classes == 10


@pytest.mark.parametrize("name", classifier_names())
def test_every_registered_classifier_builds_and_runs(name):
    shape = (64,) if name == "mlp" else (3, 32, 32)
    net = build_classifier(name, shape, 7)
    assert net(torch.randn(2, *shape)).shape == (2, 7)


def test_state_dict_keys_follow_the_authors_layout():
    assert {key.split(".")[0] for key in LeNet5().state_dict()} == {"conv1", "conv2", "conv3", "fc1", "fc2"}
    keys = set(ResNet14().state_dict())
    assert {"conv1.weight", "norm1.running_mean", "layers3.1.bn2.weight", "linear.bias"} <= keys
    assert {key.split(".")[0] for key in keys} == {"conv1", "norm1", "layers1", "layers2", "layers3", "linear"}
    mlp_keys = build_classifier("mlp", (16,), 3).state_dict()
    assert [k for k in mlp_keys if k.endswith("weight")] == [f"layers.{3 * i}.weight" for i in range(11)]


def test_resnet_downsampling_shortcut_pads_channels():
    block = ResNet14().layers2[0]
    x = torch.randn(2, 16, 32, 32)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (2, 32, 16, 16)
    assert torch.equal(shortcut[:, 8:24], x[:, :, ::2, ::2])
    assert shortcut[:, :8].abs().sum() == 0 and shortcut[:, 24:].abs().sum() == 0


def test_unknown_architecture_names_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown classifier architecture 'lenet7'.*lenet5"):
        build_classifier("lenet7", (1, 32, 32), 10)


def test_importable_class_path_builds_a_user_network_once_trusted():
    with pytest.raises(ConfigError, match="import path that you have not trusted.*KEGNET_TRUST_ARCH"):
        build_classifier("kegnet_pl.nets.classifiers:LeNet5", (1, 32, 32), 10)
    trust_arch("kegnet_pl.nets.classifiers:LeNet5", "no_such_pkg.nets:Net")
    net = build_classifier("kegnet_pl.nets.classifiers:LeNet5", (1, 32, 32), 10)
    assert isinstance(net, LeNet5)
    with pytest.raises(ConfigError, match="cannot import the classifier"):
        build_classifier("no_such_pkg.nets:Net", (1, 32, 32), 10)


def test_image_classifier_refuses_wrong_input_shape():
    with pytest.raises(
        ConfigError, match=r"LeNet5 takes images of shape \(channels, 32, 32\), got input_shape=\(1, 28, 28\)"
    ):
        build_classifier("lenet5", (1, 28, 28), 10)
    with pytest.raises(ConfigError, match="MLP takes flat feature vectors"):
        build_classifier("mlp", (1, 8, 8), 10)


def test_a_class_in_a_file_of_the_working_folder_is_an_error_that_says_how_to_import_it(tmp_path, monkeypatch):
    (tmp_path / "my_nets_here.py").write_text("from torch import nn\nclass Net(nn.Module):\n    pass\n")
    monkeypatch.chdir(tmp_path)  # the console scripts do not import from the working folder
    trust_arch("my_nets_here:Net")
    with pytest.raises(ConfigError, match=r"its file is in this folder, .* PYTHONPATH=\. kegnet"):
        build_classifier("my_nets_here:Net", (1, 32, 32), 10)
