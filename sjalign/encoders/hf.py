"""Hugging Face transformers models from a local folder as encoders: ``hf:DIR``.

``DIR`` is a folder written by ``save_pretrained`` (``config.json`` + ``model.safetensors``,
and a tokenizer or an image processor). It is loaded with ``AutoModel`` strictly offline
(``local_files_only=True``), never with ``trust_remote_code`` and only from safetensors
weights (a folder holding only ``pytorch_model.bin`` is refused, never unpickled).

- Text models (a tokenizer, no image processor): ``modality = "text"``; a batch of strings is
  tokenised with padding/truncation; ``--pooling mean`` is the attention-masked mean of the
  token states (sentence-transformers' pooling, e.g. for all-MiniLM-L6-v2), ``cls`` the first token.
- Image models (an image processor, e.g. ViT, DINOv2, I-JEPA): ``modality = "image"``; input
  size, mean and std come from the image processor's settings, applied to whole tensor batches
  with :func:`~sjalign.encoders.base.prepare_images` (grayscale is repeated to RGB). ``mean``
  pools the patch tokens (CLS and register tokens excluded), ``cls`` takes the CLS token
  (I-JEPA has none), ``tokens`` flattens every token.

``--layer N`` takes the hidden state after block N (``hidden_states[N]``, 1..num_layers,
before any final norm); ``--layer all`` gives every block's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sjalign.encoders.base import EncoderOptions, pool_tokens, prepare_images
from sjalign.device import autocast, resolve_device
from sjalign.errors import SjalignError
from sjalign.io import PICKLE_SUFFIXES

_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL resampling codes


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _read_json(path: Path, where: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SjalignError(f"{where}: cannot read {path.name} ({exc})") from None
    if not isinstance(data, dict):
        raise SjalignError(f"{where}: {path.name} is not a JSON object")
    return data


def check_model_dir(path: Path, where: str) -> dict:
    """Refuse, before transformers sees it, a folder sjalign will not load; return its config.json.

    Raises:
        SjalignError: not a folder, no config.json, a config or tokenizer/processor that needs
            ``trust_remote_code`` (``auto_map``, or a model type transformers does not know), or
            no safetensors weights (pickle-only folders are named as such).
    """
    if not path.is_dir():
        raise SjalignError(f"{where}: {path} is not a folder (hf: loads a local transformers folder "
                           "written by save_pretrained; nothing is downloaded)")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise SjalignError(f"{where}: {path} has no config.json (not a transformers model folder)")
    config = _read_json(cfg_path, where)
    remote = "auto_map" in config
    for extra in ("tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        if (path / extra).is_file() and "auto_map" in _read_json(path / extra, where):
            remote = True
    model_type = config.get("model_type")
    if not remote:
        if not model_type:
            raise SjalignError(f"{where}: {cfg_path} has no model_type")
        from sjalign.compat import import_transformers

        import_transformers()
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        remote = model_type not in CONFIG_MAPPING
    if remote:
        raise SjalignError(f"{where}: {path} needs trust_remote_code, which sjalign never enables "
                           f"(model type '{model_type}' is not built into transformers "
                           f"{_transformers_version()} or its config has auto_map)")
    files = [f for f in path.iterdir() if f.is_file()]
    if not any(f.name.endswith(".safetensors") for f in files):
        pickles = sorted(f.name for f in files if f.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise SjalignError(f"{where}: {path} holds only pickle weights ({', '.join(pickles[:3])}); sjalign "
                               "loads safetensors only and never unpickles (convert them to model.safetensors)")
        raise SjalignError(f"{where}: {path} has no model.safetensors weights")
    return config


def _transformers_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformers")
    except Exception:  # pragma: no cover - metadata missing
        return "?"


def _size_get(size, key: str):
    if size is None:
        return None
    if isinstance(size, dict):
        return size.get(key)
    return getattr(size, key, None)


def image_settings(processor, config) -> dict:
    """Input size, crop, mean/std, channels and interpolation from an HF image processor.

    Handles ``size`` as ``{"height", "width"}`` or ``{"shortest_edge"}`` (then a centre crop of
    ``crop_size`` when ``do_center_crop``), ``do_normalize`` and ``resample``.
    """
    size = getattr(processor, "size", None)
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    image_size = getattr(config, "image_size", 224)
    image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    h, w = _size_get(size, "height"), _size_get(size, "width")
    shortest = _size_get(size, "shortest_edge")
    if isinstance(size, int):
        h = w = size
    resize = None
    if h and w:
        resize = ("fixed", int(h), int(w))
    elif shortest:
        resize = ("shortest", int(shortest))
    crop_hw = None
    if crop is not None:
        ch, cw = _size_get(crop, "height"), _size_get(crop, "width")
        if isinstance(crop, int):
            ch = cw = crop
        if ch and cw:
            crop_hw = (int(ch), int(cw))
    if resize is None:
        resize = ("fixed", *(crop_hw or (image_size, image_size)))
    if getattr(processor, "do_normalize", True):
        mean = list(getattr(processor, "image_mean", None) or [0.5, 0.5, 0.5])
        std = list(getattr(processor, "image_std", None) or [0.5, 0.5, 0.5])
    else:
        mean, std = [0.0], [1.0]
    channels = int(getattr(config, "num_channels", 3) or 3)
    if len(mean) == 1:
        mean = mean * channels
    if len(std) == 1:
        std = std * channels
    resample = getattr(processor, "resample", 2)
    resample = int(getattr(resample, "value", resample) if resample is not None else 2)
    return {"resize": resize, "crop": crop_hw, "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "channels": channels, "interpolation": _RESAMPLE.get(resample, "bilinear"),
            "rescale": bool(getattr(processor, "do_rescale", True))}


class HFEncoder:
    """A transformers ``AutoModel`` from a local folder (see the module docstring)."""

    spec = "hf"
    modality = "image"  # or "text": set per model (a tokenizer and no image processor)
    syntax = "hf:DIR"
    modalities = ("image", "text")

    def __init__(self, model, config, options: EncoderOptions, path: str, *, tokenizer=None, image=None):
        self.model, self.config, self.options, self.path = model, config, options, path
        self.tokenizer, self.image = tokenizer, image
        self.modality = "text" if tokenizer is not None else "image"
        self.where = f"hf:{path}"
        self.device = resolve_device(options.device)
        self.model.to(self.device)
        self.model.eval()
        self.num_layers = getattr(config, "num_hidden_layers", None)
        self.num_features = int(getattr(config, "hidden_size", 0) or 0)
        self.model_type = getattr(config, "model_type", "?")
        self.has_cls = self.modality == "text" or self._has_cls_token()
        if tokenizer is not None:
            limit = getattr(tokenizer, "model_max_length", None)
            pos = getattr(config, "max_position_embeddings", None)
            if not isinstance(limit, int) or limit <= 0 or limit > 100_000:
                limit = pos if isinstance(pos, int) and pos > 0 else 512
            self.max_length = int(limit)

    def _has_cls_token(self) -> bool:
        if self.model_type == "ijepa":
            return False
        emb = getattr(self.model, "embeddings", None)
        return emb is not None and getattr(emb, "cls_token", None) is not None

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_spec(cls, arg: str, options: EncoderOptions) -> "HFEncoder":
        if not arg:
            raise SjalignError("encoder 'hf' needs a local transformers folder: hf:DIR")
        where = f"hf:{arg}"
        _offline()
        path = Path(arg).expanduser()
        check_model_dir(path, where)
        from sjalign.compat import import_transformers

        import_transformers()
        from transformers import AutoConfig, AutoModel

        kw = {"local_files_only": True, "trust_remote_code": False}
        try:
            config = AutoConfig.from_pretrained(str(path), **kw)
        except Exception as exc:
            raise SjalignError(f"{where}: cannot load config.json ({_one_line(exc)})") from None
        if options.pooling == "cls" and getattr(config, "model_type", None) == "ijepa":
            raise SjalignError(f"{where}: I-JEPA has no CLS token; use --pooling mean")
        image, tokenizer = cls._load_preprocessor(path, config, where, kw)
        if tokenizer is not None and options.pooling == "tokens":
            raise SjalignError(f"{where}: --pooling tokens needs a fixed number of tokens, which text does not "
                               "have; use --pooling mean or cls")
        layers = getattr(config, "num_hidden_layers", None)
        if options.layer not in (None, "all"):
            ok = isinstance(options.layer, int) and options.layer >= 1 and (layers is None or options.layer <= layers)
            if not ok:
                raise SjalignError(f"{where}: --layer {options.layer} out of range (blocks 1..{layers}, or all)")
        try:
            model = AutoModel.from_pretrained(str(path), config=config, use_safetensors=True, **kw)
        except Exception as exc:
            raise SjalignError(f"{where}: cannot load the model ({_one_line(exc)})") from None
        enc = cls(model, config, options, arg, tokenizer=tokenizer, image=image)
        if options.pooling == "cls" and not enc.has_cls:
            raise SjalignError(f"{where}: this {enc.model_type} model has no CLS token; use --pooling mean")
        return enc

    @staticmethod
    def _load_preprocessor(path: Path, config, where: str, kw: dict):
        """(image settings, None) for image models, (None, tokenizer) for text models."""
        from transformers import AutoImageProcessor, AutoTokenizer

        has_image = (path / "preprocessor_config.json").is_file()
        if has_image:
            try:
                processor = AutoImageProcessor.from_pretrained(str(path), **kw)
            except Exception as exc:
                raise SjalignError(f"{where}: cannot load the image processor ({_one_line(exc)})") from None
            return image_settings(processor, config), None
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), **kw)
        except Exception as exc:
            raise SjalignError(f"{where}: no image processor (preprocessor_config.json) and no usable tokenizer "
                               f"({_one_line(exc)})") from None
        if tokenizer is None or not callable(tokenizer):
            raise SjalignError(f"{where}: no image processor and no tokenizer in {path}")
        return None, tokenizer

    # ------------------------------------------------------------------ running

    def _autocast(self):
        return autocast(self.device, self.options.dtype)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            raise SjalignError(f"{self.where} embeds images; got {type(images).__name__}")
        s = self.image
        x = images.to(self.device, torch.float32)
        if not s["rescale"]:
            x = x * 255.0
        if s["resize"][0] == "fixed":
            size = s["resize"][1:]
        else:  # shortest edge to s, aspect ratio kept
            short, (h, w) = s["resize"][1], x.shape[-2:]
            size = (short, max(1, round(w * short / h))) if h <= w else (max(1, round(h * short / w)), short)
        x = prepare_images(x, size=tuple(size), mean=s["mean"], std=s["std"], channels=s["channels"],
                           interpolation=s["interpolation"])
        if s["crop"] is not None and tuple(x.shape[-2:]) != s["crop"]:
            (ch, cw), (h, w) = s["crop"], x.shape[-2:]
            if ch > h or cw > w:
                x = torch.nn.functional.interpolate(x, size=(ch, cw), mode="bilinear", align_corners=False)
            else:
                top, left = (h - ch) // 2, (w - cw) // 2
                x = x[..., top:top + ch, left:left + cw]
        return x.contiguous()

    def _forward(self, batch, hidden: bool):
        """Run the model: (output, attention mask or None)."""
        if self.modality == "text":
            if isinstance(batch, str) or not all(isinstance(t, str) for t in batch):
                raise SjalignError(f"{self.where} embeds text; expected a list of strings")
            enc = self.tokenizer(list(batch), padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            with self._autocast():
                out = self.model(**enc, output_hidden_states=hidden, return_dict=True)
            return out, enc["attention_mask"]
        x = self._prepare(batch)
        with self._autocast():
            out = self.model(pixel_values=x, output_hidden_states=hidden, return_dict=True)
        return out, None

    def _pool(self, tokens: torch.Tensor, mask) -> torch.Tensor:
        tokens = tokens.float()
        if tokens.ndim == 4:  # convolutional feature maps (B, C, h, w) -> tokens (B, h*w, C)
            tokens = tokens.flatten(2).transpose(1, 2)
            num_prefix = 0
        elif mask is not None:
            num_prefix = 1
        else:
            num_prefix = self._num_prefix(tokens.shape[1])
        return pool_tokens(tokens, self.options.pooling, num_prefix=num_prefix, mask=mask, where=self.where).cpu()

    def _num_prefix(self, n_tokens: int) -> int:
        """CLS (+ register/distillation) tokens in front of the patch tokens."""
        if self.model_type == "ijepa":
            return 0
        patch = getattr(self.config, "patch_size", None)
        patch = patch[0] if isinstance(patch, (list, tuple)) else patch
        if isinstance(patch, int) and patch > 0 and self.image is not None:
            h, w = self.image["crop"] or self._input_hw()
            extra = n_tokens - (h // patch) * (w // patch)
            if 0 <= extra < n_tokens:
                return extra
        return (1 + int(getattr(self.config, "num_register_tokens", 0) or 0)) if self.has_cls else 0

    def _input_hw(self) -> tuple[int, int]:
        r = self.image["resize"]
        return (r[1], r[2]) if r[0] == "fixed" else (r[1], r[1])

    def _check_layers(self, hidden_states) -> None:
        if self.num_layers is None:
            self.num_layers = len(hidden_states) - 1
        layer = self.options.layer
        if isinstance(layer, int) and not 1 <= layer < len(hidden_states):
            raise SjalignError(f"{self.where}: --layer {layer} out of range (blocks 1..{len(hidden_states) - 1})")

    @torch.no_grad()
    def embed_batch(self, batch) -> torch.Tensor:
        layer = None if self.options.layer == "all" else self.options.layer
        out, mask = self._forward(batch, hidden=layer is not None)
        if layer is None:
            tokens = out.last_hidden_state
        else:
            self._check_layers(out.hidden_states)
            tokens = out.hidden_states[layer]
        return self._pool(tokens, mask)

    @torch.no_grad()
    def embed_batch_layers(self, batch) -> list[torch.Tensor]:
        """One (B, D) tensor per block 1..num_layers (``hidden_states[1:]``, pooled)."""
        out, mask = self._forward(batch, hidden=True)
        self._check_layers(out.hidden_states)
        return [self._pool(h, mask) for h in out.hidden_states[1:]]

    def describe(self) -> dict:
        layer = "final" if self.options.layer is None else str(self.options.layer)
        cfg = {"dir": str(self.path), "model_type": self.model_type,
               "architecture": type(self.model).__name__, "hidden_size": self.num_features,
               "num_layers": self.num_layers, "modality": self.modality}
        if self.modality == "text":
            cfg["max_length"] = self.max_length
            cfg["tokenizer"] = type(self.tokenizer).__name__
        else:
            h, w = self.image["crop"] or self._input_hw()
            cfg.update({"image_size": [h, w], "patch_size": getattr(self.config, "patch_size", None),
                        "resize": list(self.image["resize"]), "mean": self.image["mean"], "std": self.image["std"],
                        "channels": self.image["channels"], "interpolation": self.image["interpolation"],
                        "cls_token": self.has_cls})
        return {"layer": layer, "pooling": self.options.pooling, "config": cfg}


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)
