"""GapNet / SC-CNN (phenovec.train.gapnet) and the paper's comparison networks as ProfileNet architectures.

References: the parameter counts of Hofmarcher et al. 2019, Table 2 (5 channels, 209 tasks); the layer list of the
digest's appendix X.1 (checked module by module); onnxruntime (CPU) for the exported graph.
"""
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from phenovec.export import export_onnx
from phenovec.train.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from phenovec.train.gapnet import POOLED_DIM, GapNet
from phenovec.train.models import ARCHS, ProfileNet, build_model, load_state_dict_file

torch.set_num_threads(1)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch, expected", [("gapnet", 3_694_545), ("sc_cnn", 3_694_545),
                                            ("densenet121", 7_174_353), ("resnet101", 42_934_673)])
def test_parameter_counts_are_the_papers(arch, expected):
    """Table 2 of the paper: GapNet 3,694,545, DenseNet 7,174,353, ResNet(-101) 42,934,673 on 5 channels, 209 tasks."""
    assert n_params(build_model(arch, 5, 209)) == expected


def test_layer_list_is_the_digests():
    net = build_model("gapnet", 5, 209).backbone
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    got = [(c.in_channels, c.out_channels, c.stride[0], c.padding[0], c.dilation[0]) for c in convs]
    assert got == [(5, 32, 2, 1, 1), (32, 64, 2, 1, 1), (64, 64, 1, 1, 1), (64, 64, 1, 1, 1), (64, 128, 1, 1, 1),
                   (128, 128, 1, 1, 1), (128, 128, 1, 1, 1), (128, 256, 1, 2, 2), (256, 256, 1, 2, 2),
                   (256, 256, 1, 4, 4)]
    assert all(c.kernel_size == (3, 3) and c.bias is not None for c in convs)
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert [p.padding for p in pools] == [0, 1, 0]
    assert sum(isinstance(m, nn.SELU) for m in net.modules()) == 10 + 2  # every conv and both fc layers
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in net.modules())
    sc = build_model("sc_cnn", 5, 209).backbone
    assert [c.dilation[0] for c in sc.modules() if isinstance(c, nn.Conv2d)][-3:] == [1, 1, 1]
    assert [p.padding for p in sc.modules() if isinstance(p, nn.MaxPool2d)] == [0, 0, 0]


@pytest.mark.parametrize("arch", ["gapnet", "sc_cnn"])
@pytest.mark.parametrize("channels, hw", [(5, (48, 48)), (1, (32, 45)), (7, (96, 96)), (3, (130, 70))])
def test_any_input_size_and_channel_count(arch, channels, hw):
    torch.manual_seed(0)
    model = build_model(arch, channels, 11).eval()
    x = torch.randn(3, channels, *hw)
    with torch.no_grad():
        feats, logits = model.forward_features(x)
        pooled = model.backbone.pooled(x)
    assert feats.shape == (3, 1024) == (3, model.feature_dim) and logits.shape == (3, 11)
    assert pooled.shape == (3, POOLED_DIM) and torch.isfinite(logits).all()
    assert torch.equal(model.embed(x), feats)
    with pytest.raises(ValueError, match=f"expects {channels} channels"):
        model(torch.randn(1, channels + 1, *hw))


def test_sc_cnn_on_single_cell_crops_sees_each_block():
    """96 x 96 crops: block outputs 24, 6, 3 and 3 px (no padding in block2's pool, no dilation)."""
    net = GapNet(5, 64, dilated=False).eval()
    x = torch.randn(2, 5, 96, 96)
    sizes = []
    for block in (net.block1, net.block2, net.block3, net.block4):
        x = block(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(32, 24, 24), (64, 6, 6), (128, 3, 3), (256, 3, 3)]


def test_selu_init_keeps_activations_normalised():
    """LeCun-normal weights: a standardised input keeps the first fc layer's pre-activations near unit variance."""
    torch.manual_seed(0)
    net = GapNet(5).eval()
    with torch.no_grad():
        h = net.fc[0](torch.randn(4096, POOLED_DIM))
    assert 0.8 < float(h.std()) < 1.2
    w = net.block2[0].weight
    assert abs(float(w.detach().std()) - (1 / (32 * 9)) ** 0.5) < 0.01


def test_alpha_dropout_only_in_training():
    torch.manual_seed(0)
    model = build_model("gapnet", 5, 4, dropout=0.3)
    assert isinstance(model.dropout, nn.AlphaDropout) and model.backbone.fc[2].p == 0.3
    x = torch.randn(2, 5, 48, 48)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_config_and_checkpoint_round_trip(tmp_path):
    model = build_model("gapnet", 5, 9, seed=3).eval()
    assert model.config["arch"] == "gapnet" and model.config["feature_dim"] == 1024
    again = ProfileNet.from_config(model.config)
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 5, 64, 64)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model(x))
    save_checkpoint({"model_config": model.config, "model_state": model.state_dict(),
                     "data_config": {"channels": list("abcde"), "box_size": 64}}, tmp_path / "ck.pt")
    loaded, _ = model_from_checkpoint(load_checkpoint(tmp_path / "ck.pt"))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not torch.equal(build_model("gapnet", 5, 9, seed=4).state_dict()["head.weight"],
                           model.state_dict()["head.weight"])


def test_backbone_weights_file_loads_and_adapts_rgb(tmp_path):
    rgb = build_model("gapnet", 3, 2, seed=0)
    torch.save(rgb.backbone.state_dict(), tmp_path / "w.pt")
    five = build_model("gapnet", 5, 7, weights=tmp_path / "w.pt")
    w3 = load_state_dict_file(tmp_path / "w.pt")["block1.0.weight"]
    got = five.backbone.state_dict()["block1.0.weight"]
    assert got.shape == (32, 5, 3, 3)
    torch.testing.assert_close(got[:, :3], w3 * 3 / 5)  # timm's rule: tiled, scaled by 3 / C
    torch.testing.assert_close(five.backbone.state_dict()["fc.3.weight"], rgb.backbone.state_dict()["fc.3.weight"])


def test_densenet121_takes_five_channels():
    model = build_model("densenet121", 5, 3).eval()
    assert model.backbone.features.conv0.in_channels == 5 and ARCHS["densenet121"] == 1024
    with torch.no_grad():
        f, lg = model.forward_features(torch.randn(1, 5, 64, 64))
    assert f.shape == (1, 1024) and lg.shape == (1, 3)


@pytest.mark.parametrize("arch", ["gapnet", "sc_cnn"])
def test_onnx_export_matches_onnxruntime(arch, tmp_path):
    torch.manual_seed(1)
    model = build_model(arch, 5, 6).eval()
    crops = np.random.default_rng(0).standard_normal((5, 5, 96, 96)).astype(np.float32)
    path = tmp_path / f"{arch}.onnx"
    rep = export_onnx(model, path, channels=["DNA", "ER", "RNA", "AGP", "Mito"], crop_size=96,
                      intensity={"input_scaling": "none"}, logits=True, parity_crops=crops[:2])
    assert rep.feature_dim == 1024 and rep.outputs == ["features", "logits"] and rep.max_abs_diff <= 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    f, lg = sess.run(["features", "logits"], {"crops": crops})  # batch 5: the batch axis is dynamic
    with torch.no_grad():
        rf, rl = model.forward_features(torch.from_numpy(crops))
    assert float(rf.std()) > 1e-2
    np.testing.assert_allclose(f, rf.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(lg, rl.numpy(), atol=1e-4, rtol=0)
    # the task probabilities are the sigmoid of the exported logits
    np.testing.assert_allclose(1 / (1 + np.exp(-lg)), torch.sigmoid(rl).numpy(), atol=1e-5)
