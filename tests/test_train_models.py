"""phenovec.train.models: torchvision backbones with C channels, pooled profiles, safe ImageNet-weight loading.

References: torchvision's own networks (same weights -> same pooled features), timm's adapt_input_conv rule
recomputed here by hand, torch.load(weights_only=True) refusing pickled objects.
"""
import json
import math
import pickle

import pytest
import torch
import torchvision

from phenovec.train.models import ARCHS, ProfileNet, WeightsError, build_model

torch.set_num_threads(1)

EXPECTED_DIMS = {"efficientnet_b0": 1280, "resnet50": 2048, "resnet18": 512}


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("channels", [1, 3, 5, 6])
def test_shapes_every_arch_and_channel_count(arch, channels):
    net = build_model(arch, channels, 7, seed=0).eval()
    assert (net.arch, net.in_channels, net.num_classes) == (arch, channels, 7)
    if arch in EXPECTED_DIMS:
        assert net.feature_dim == EXPECTED_DIMS[arch]
    x = torch.rand(2, channels, 32, 40)
    with torch.no_grad():
        logits = net(x)
        emb = net.embed(x)
        f2, l2 = net.forward_features(x)
    assert logits.shape == (2, 7) and logits.dtype == torch.float32
    assert emb.shape == (2, net.feature_dim)
    torch.testing.assert_close(f2, emb)
    torch.testing.assert_close(l2, logits)
    # logits are the linear head applied to the profile
    torch.testing.assert_close(net.head(emb), logits)


@pytest.mark.parametrize("arch", ["efficientnet_tiny", "resnet_tiny", "resnet18"])
def test_config_is_plain_and_rebuilds(arch):
    net = build_model(arch, 5, 3, dropout=0.25, seed=1).eval()
    cfg = net.config
    assert json.loads(json.dumps(cfg)) == cfg  # plain str/int/float only
    again = ProfileNet.from_config(cfg)
    again.load_state_dict(net.state_dict())
    again.eval()
    x = torch.rand(3, 5, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x), rtol=0, atol=0)
    assert again.config == cfg
    with pytest.raises(ValueError, match="unknown key"):
        ProfileNet.from_config({**cfg, "widht": 2})
    with pytest.raises(ValueError, match="missing key 'arch'"):
        ProfileNet.from_config({k: v for k, v in cfg.items() if k != "arch"})
    with pytest.raises(ValueError, match="unknown arch"):
        ProfileNet.from_config({**cfg, "arch": "vgg16", "feature_dim": 1})


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="unknown arch 'resnet34'"):
        build_model("resnet34", 3, 2)
    with pytest.raises(ValueError, match="in_channels"):
        build_model("resnet_tiny", 0, 2)
    net = build_model("resnet_tiny", 5, 2, seed=0)
    with pytest.raises(ValueError, match="expects 5 channels, got 3"):
        net(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="H, W >= 32"):
        net(torch.rand(1, 5, 31, 64))
    with pytest.raises(ValueError, match="N x C x H x W"):
        net(torch.rand(5, 64, 64))


def test_seeded_init_is_deterministic_and_leaves_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model("efficientnet_tiny", 5, 4, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = build_model("efficientnet_tiny", 5, 4, seed=7)
    c = build_model("efficientnet_tiny", 5, 4, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())


def test_dropout_only_in_training():
    net = build_model("resnet_tiny", 3, 4, dropout=0.5, seed=0)
    assert isinstance(net.dropout, torch.nn.Dropout) and net.dropout.p == 0.5
    feats = torch.rand(64, net.feature_dim) + 0.5
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net.head(net.dropout(feats)), net.head(feats))
        x = torch.rand(4, 3, 32, 32)
        torch.testing.assert_close(net(x), net(x))
    net.train()
    with torch.no_grad():
        dropped = net.dropout(feats)
    zero_frac = (dropped == 0).float().mean().item()
    assert 0.4 < zero_frac < 0.6


# -- ImageNet-style weights --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    # make BN statistics non-trivial so that eval-mode comparisons test them
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    path = tmp_path_factory.mktemp("w") / "resnet18_imagenet.pth"
    torch.save(ref.state_dict(), path)
    return path, ref.state_dict()


def _timm_rule(w, c):
    """timm.models._manipulate.adapt_input_conv, written out independently."""
    if c == 1:
        return w.sum(dim=1, keepdim=True)
    if c == 3:
        return w
    tiles = [w] * math.ceil(c / 3)
    return torch.cat(tiles, dim=1)[:, :c] * (3.0 / c)


@pytest.mark.parametrize("channels", [1, 2, 5, 6, 7])
def test_first_conv_adapted_with_timm_rule(resnet18_file, channels):
    path, sd = resnet18_file
    net = build_model("resnet18", channels, 9, weights=path, seed=0)
    w = sd["conv1.weight"]
    got = net.backbone.conv1.weight.detach()
    assert got.shape == (64, channels, 7, 7)
    torch.testing.assert_close(got, _timm_rule(w, channels), rtol=0, atol=1e-7)
    if channels == 5:  # spelled out: channels 0..4 = R, G, B, R, G times 3/5
        torch.testing.assert_close(got[:, 3], w[:, 0] * 0.6)
        torch.testing.assert_close(got[:, 4], w[:, 1] * 0.6)
    # every other backbone tensor is copied exactly
    for k, v in net.backbone.state_dict().items():
        if k != "conv1.weight":
            assert torch.equal(v, sd[k]), k
    assert net.head.weight.shape == (9, 512)


def test_three_channels_match_torchvision_exactly(resnet18_file):
    path, sd = resnet18_file
    net = build_model("resnet18", 3, 5, weights=path, seed=0).eval()
    ref = torchvision.models.resnet18(weights=None)
    ref.load_state_dict(sd)
    ref.fc = torch.nn.Identity()
    ref.eval()
    for k, v in net.backbone.state_dict().items():
        assert torch.equal(v, sd[k]), k
    x = torch.rand(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net.embed(x), ref(x), rtol=0, atol=1e-5)


def test_five_channel_adaptation_preserves_response_to_grey_input(resnet18_file):
    """With timm's rule, a grey image in C channels gives the same response as in RGB (scale kept)."""
    path, sd = resnet18_file
    n5 = build_model("resnet18", 6, 5, weights=path).eval()
    n3 = build_model("resnet18", 3, 5, weights=path).eval()
    g = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(n5.embed(g.expand(-1, 6, -1, -1)), n3.embed(g.expand(-1, 3, -1, -1)),
                                   rtol=1e-4, atol=1e-5)


def test_efficientnet_b0_weights_match_torchvision(tmp_path):
    torch.manual_seed(1)
    ref = torchvision.models.efficientnet_b0(weights=None)
    path = tmp_path / "effb0.pth"
    torch.save(ref.state_dict(), path)
    net = build_model("efficientnet_b0", 3, 4, weights=path).eval()
    ref.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = torch.flatten(ref.avgpool(ref.features(x)), 1)
        torch.testing.assert_close(net.embed(x), expected, rtol=0, atol=1e-5)
    net5 = build_model("efficientnet_b0", 5, 4, weights=path)
    torch.testing.assert_close(net5.backbone.features[0][0].weight.detach(),
                               _timm_rule(ref.state_dict()["features.0.0.weight"], 5))


def test_wrong_keys_and_shapes_name_key_and_file(resnet18_file, tmp_path):
    _, sd = resnet18_file
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "layer2.0.bn1.running_var"}, "layer2.0.bn1.running_var"),
        "unexpected": ({**sd, "layer5.0.conv1.weight": torch.zeros(1)}, "layer5.0.conv1.weight"),
        "shape": ({**sd, "layer4.1.conv2.weight": torch.zeros(512, 512, 1, 1)}, "layer4.1.conv2.weight"),
    }
    for name, (state, key) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        with pytest.raises(WeightsError, match=key.replace(".", r"\.")) as info:
            build_model("resnet18", 5, 3, weights=path)
        assert str(path) in str(info.value), name
    # a ResNet-50 file for a ResNet-18 is refused (keys differ)
    with pytest.raises(WeightsError, match="resnet18"):
        path = tmp_path / "r50.pth"
        torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
        build_model("resnet18", 3, 3, weights=path)
    with pytest.raises(WeightsError, match="not found"):
        build_model("resnet18", 3, 3, weights=tmp_path / "nope.pth")


class _Payload:
    """Unpickling this object would create a marker file: proves the loader never unpickles."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickled_objects_are_refused(resnet18_file, tmp_path):
    _, sd = resnet18_file
    marker = tmp_path / "unpickled.txt"
    evil = tmp_path / "evil.pth"
    torch.save({**sd, "extra": _Payload(str(marker))}, evil)
    with pytest.raises(WeightsError, match="weights-only") as info:
        build_model("resnet18", 3, 2, weights=evil)
    assert str(evil) in str(info.value)
    plain = tmp_path / "plain.pkl"
    with open(plain, "wb") as fh:
        pickle.dump(_Payload(str(marker)), fh)
    with pytest.raises(WeightsError, match="weights-only"):
        build_model("resnet18", 3, 2, weights=plain)
    assert not marker.exists()
    # loadable in weights-only mode but not a tensor state_dict
    notensor = tmp_path / "notensor.pth"
    torch.save({**sd, "conv1.weight": "ImageNet"}, notensor)
    with pytest.raises(WeightsError, match="'conv1.weight' is a str"):
        build_model("resnet18", 3, 2, weights=notensor)
    lst = tmp_path / "list.pth"
    torch.save([sd["conv1.weight"]], lst)
    with pytest.raises(WeightsError, match="expected a state_dict"):
        build_model("resnet18", 3, 2, weights=lst)
