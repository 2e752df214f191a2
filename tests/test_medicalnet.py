import hashlib

import pytest
import torch

from prdit.errors import CheckpointError
from prdit.evaluation.medicalnet import FALLBACK_LABEL, FEATURE_DIM, MedicalNetFeatures, extract_features

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fallback():
    return MedicalNetFeatures()


@pytest.fixture(scope="module")
def volumes():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(2, 1, 16, 16, 16, generator=generator) * 2 - 1


def test_features_are_2048d_and_deterministic_without_touching_the_callers_rng(fallback, volumes):
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    other = MedicalNetFeatures()  # built under its own seed in a forked RNG
    assert torch.equal(torch.rand(3), expected_draw)
    with torch.no_grad():
        first, second = fallback(volumes), other(volumes)
    assert first.shape == (2, FEATURE_DIM)
    assert torch.equal(first, second)
    assert fallback.weights == FALLBACK_LABEL and "not comparable" in fallback.weights


def test_architecture_is_medicalnet_resnet50(fallback):
    net = fallback.backbone
    assert (net.conv1.kernel_size, net.conv1.stride, net.conv1.padding, net.conv1.bias) == ((7, 7, 7), (2, 2, 2), (3, 3, 3), None)
    assert (net.maxpool.kernel_size, net.maxpool.stride, net.maxpool.padding) == (3, 2, 1)
    assert [len(layer) for layer in (net.layer1, net.layer2, net.layer3, net.layer4)] == [3, 4, 6, 3]
    assert net.layer2[0].conv2.stride == (2, 2, 2)
    for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
        assert all(block.conv2.dilation == (dilation,) * 3 and block.conv2.stride == (1, 1, 1) for block in layer)
    shortcut = net.layer4[0].downsample  # type B: 1x1x1 conv without bias + BN
    assert shortcut[0].kernel_size == (1, 1, 1) and shortcut[0].bias is None and isinstance(shortcut[1], torch.nn.BatchNorm3d)
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 2048, 4, 4, 4)  # total stride 8


def test_zscore_features_ignore_a_linear_intensity_change(volumes):
    extractor = MedicalNetFeatures(normalization="zscore")
    with torch.no_grad():
        torch.testing.assert_close(extractor(volumes), extractor(3.0 * volumes + 0.5), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        MedicalNetFeatures(normalization="minmax")


def test_extractor_stays_in_eval_mode(fallback):
    fallback.train()
    assert not fallback.training and not fallback.backbone.bn1.training


def test_medicalnet_release_format_loads_and_reproduces_features(tmp_path, fallback, volumes):
    trained = MedicalNetFeatures()
    with torch.no_grad():  # make it differ from the fallback, running statistics included
        for name, tensor in trained.backbone.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(0.01 * torch.randn_like(tensor)) if "running_var" not in name else tensor.fill_(1.5)
    state = {f"module.{k}": v for k, v in trained.backbone.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(2, 2048, 1, 1, 1)  # the segmentation head the release carries
    path = tmp_path / "resnet_50_23dataset.pth"
    torch.save({"state_dict": state}, path)

    loaded = MedicalNetFeatures(pretrain_path=path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(volumes), trained(volumes))
        assert not torch.allclose(loaded(volumes), fallback(volumes))
    assert loaded.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.weights_sha256 in loaded.weights

    torch.save({"state_dict": {"module.conv1.weight": state["module.conv1.weight"]}}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing"):
        MedicalNetFeatures(pretrain_path=tmp_path / "partial.pth")


def test_bad_weight_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        MedicalNetFeatures(pretrain_path=tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        MedicalNetFeatures(pretrain_path=tmp_path / "junk.pth")


def test_extract_features_batches_match_one_pass(fallback, volumes):
    batched = extract_features(fallback, volumes[:, 0].numpy(), batch_size=1)
    with torch.no_grad():
        whole = fallback(volumes).double().numpy()
    assert batched.dtype.name == "float64"
    torch.testing.assert_close(torch.from_numpy(batched), torch.from_numpy(whole), rtol=1e-5, atol=1e-6)
