"""timm image models as encoders: ``timm:NAME@WEIGHTS``.

WEIGHTS is one of

* ``FILE.safetensors``: a state dict for NAME (e.g. written by ``sjalign convert``); with
  ``timm:@FILE.safetensors`` the architecture is read from the file's ``arch`` metadata;
* ``DIR``: a timm ``local-dir:`` folder (``config.json`` + ``model.safetensors``); NAME may be
  left empty (``timm:@DIR``, or ``timm:local-dir:DIR``) and is then read from config.json;
* ``random``: NAME untrained, with a fixed seed (a control).

Nothing is ever downloaded (``pretrained=False``) and nothing is unpickled. timm is imported
inside the methods only (through :func:`sjalign.compat.import_timm`), so ``sjalign --help``
stays fast.
"""

from __future__ import annotations

import difflib
import inspect
import json
from pathlib import Path

import torch

from sjalign.encoders.base import EncoderOptions, check_pooling, pool_tokens, prepare_images
from sjalign.device import autocast, resolve_device
from sjalign.errors import FileFormatError, SjalignError
from sjalign.io import PICKLE_SUFFIXES, read_safetensors

RANDOM = "random"
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save zip archive; legacy pickle protocol 2+


def _timm():
    from sjalign.compat import import_timm

    return import_timm()


def _close_matches(timm, name: str) -> list[str]:
    names = timm.list_models()
    found = timm.list_models(f"*{name}*") if name else []
    found += [n for n in difflib.get_close_matches(name, names, n=8, cutoff=0.6) if n not in found]
    return found[:10]


def _is_pickle(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(_PICKLE_MAGIC)


def _not_safetensors(path: Path, name: str) -> SjalignError:
    arch = name or "ARCH"
    return SjalignError(f"{path}: not a safetensors file (looks like a pickled PyTorch checkpoint, which sjalign "
                        f"never loads); convert it first: sjalign convert --from {path} --arch {arch} "
                        f"-o weights.safetensors")


def read_weights(path: Path, name: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors weights file.

    Raises:
        SjalignError: missing file, a pickle (``.pth``/``.bin``/``.pt``), or not safetensors.
    """
    if not path.is_file():
        raise SjalignError(f"{path}: no such weights file")
    try:
        return read_safetensors(path, framework="pt")
    except FileFormatError:
        # only now look at the first bytes: a safetensors header length may itself start with 0x80
        if _is_pickle(path) or path.suffix.lower() in PICKLE_SUFFIXES:
            raise _not_safetensors(path, name) from None
        raise


def _key_list(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(model, tensors: dict[str, torch.Tensor], path: Path, name: str) -> None:
    """``load_state_dict(strict=True)``; a mismatch -> SjalignError naming missing/unexpected keys.

    Raises:
        SjalignError: keys or shapes that do not fit the architecture.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    shapes = [f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_key_list(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_key_list(unexpected)})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches ({_key_list(shapes, 3)})")
        raise SjalignError(f"{path}: weights do not fit timm model '{name}': " + "; ".join(parts))
    model.load_state_dict(tensors, strict=True)


def _num_classes(model, tensors: dict[str, torch.Tensor]) -> int | None:
    """The head size stored in a state dict (0 = no classifier), or None when it cannot be told."""
    clf = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(clf, (list, tuple)):
        clf = clf[0] if clf else None
    if not clf:
        return None
    weight = tensors.get(f"{clf}.weight")
    if weight is None:
        return 0 if not any(k.startswith(f"{clf}.") for k in tensors) else None
    return int(weight.shape[0])


def build_model(name: str, weights: str, *, where: str):
    """Create and load a timm model for a spec's NAME and WEIGHTS (see the module doc).

    Returns:
        (model in eval mode, resolved name, description of the weights).

    Raises:
        SjalignError: unknown model, missing/bad/mismatched weights.
    """
    timm = _timm()
    overlay = None
    tensors = None
    weights_path = None
    num_classes = None
    if weights == RANDOM:
        if not name:
            raise SjalignError(f"{where}: 'random' weights need a model name: timm:NAME@random")
    else:
        weights_path = Path(weights)
        if weights_path.is_dir():
            cfg_path = weights_path / "config.json"
            if not cfg_path.is_file():
                raise SjalignError(f"{weights_path}: not a timm local-dir folder (no config.json)")
            try:
                cfg = json.loads(cfg_path.read_text())
            except (OSError, ValueError) as exc:
                raise SjalignError(f"{cfg_path}: unreadable config.json ({exc})") from None
            arch = cfg.get("architecture") or cfg.get("arch")
            if name and arch and name != arch:
                raise SjalignError(f"{where}: model name '{name}' differs from {cfg_path}'s architecture '{arch}'")
            name = name or arch or ""
            if not name:
                raise SjalignError(f"{cfg_path}: no 'architecture' entry; give the model name: timm:NAME@{weights}")
            if isinstance(cfg.get("pretrained_cfg"), dict):
                overlay = cfg["pretrained_cfg"]
            if isinstance(cfg.get("num_classes"), int):
                num_classes = cfg["num_classes"]
            file = weights_path / "model.safetensors"
            if not file.is_file():
                pickles = [p.name for p in weights_path.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES]
                extra = f" (found {', '.join(pickles)}: pickle files are never loaded; use sjalign convert)" if pickles else ""
                raise SjalignError(f"{weights_path}: no model.safetensors{extra}")
            weights_path = file
        tensors, meta = read_weights(weights_path, name)
        if not name:
            name = meta.get("arch", "")
            if not name:
                raise SjalignError(f"{weights_path}: no 'arch' metadata; give the model name: timm:NAME@{weights}")
    if not timm.is_model(name):
        close = _close_matches(timm, name)
        hint = f" (close matches: {', '.join(close)})" if close else " (see timm.list_models())"
        raise SjalignError(f"{where}: unknown timm model '{name}'{hint}")
    kwargs = {"pretrained": False}
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # 'random' weights are reproducible
        try:
            if tensors is None:
                model = timm.create_model(name, num_classes=0, **kwargs)
            else:
                extra = {} if num_classes is None else {"num_classes": num_classes}
                model = timm.create_model(name, **kwargs, **extra)
                stored = _num_classes(model, tensors) if num_classes is None else None
                if stored is not None and stored != getattr(model, "num_classes", stored):
                    model = timm.create_model(name, num_classes=stored, **kwargs)  # the file's head size
        except SjalignError:
            raise
        except Exception as exc:
            raise SjalignError(f"{where}: cannot create timm model '{name}' ({type(exc).__name__}: {exc})") from None
    if tensors is not None:
        load_weights(model, tensors, weights_path, name)
    return model.eval(), name, (RANDOM if weights_path is None else str(weights_path))


class TimmEncoder:
    """A timm model's final features (or block N's / every stage's with ``--layer``).

    ``embed_batch``: (B, C, H, W) in [0, 1] -> (B, d). Images are resized to the model's input
    size with its interpolation, grayscale repeated to RGB, and normalised with its mean/std
    (timm's data config; the whole image is resized, no centre crop). Final output: CNN
    feature maps go through the model's own ``forward_head(pre_logits=True)`` (global pooling,
    d = ``num_features``) for ``--pooling mean``; ViT-like tokens (B, N, D) are pooled with
    :func:`pool_tokens` (``cls`` = token 0, ``mean`` over patch tokens). ``--layer N`` is the
    N-th of ``forward_intermediates`` (1-based: CNN stages or ViT blocks), globally averaged
    (CNN) or token-pooled (ViT).
    """

    spec = "timm"
    modality = "image"
    syntax = "timm:NAME@WEIGHTS.safetensors | timm:NAME@DIR | timm:NAME@random"

    def __init__(self, model, name: str, weights: str, options: EncoderOptions):
        self.model, self.name, self.weights, self.options = model, name, weights, options
        self.where = f"timm:{name}@{weights}"
        self.device = resolve_device(options.device)
        self.model.to(self.device)
        self.num_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        timm = _timm()
        cfg = timm.data.resolve_data_config({}, model=model)
        self.data_config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
        self.channels, self.height, self.width = (int(v) for v in cfg["input_size"])
        if options.image_size is not None:  # run at the user's size, not the pretraining one (224)
            side = int(options.image_size)
            if hasattr(model, "set_input_size"):  # ViT-like: a new patch grid, position embeddings resampled
                try:
                    model.set_input_size(img_size=(side, side))
                except (AssertionError, ValueError, RuntimeError, TypeError) as exc:
                    raise SjalignError(f"{self.where}: cannot run at --image-size {side}: {exc}") from None
            self.height = self.width = side
            self.data_config["input_size"] = [self.channels, side, side]
        self.interpolation = str(cfg.get("interpolation", "bilinear"))
        self.mean = torch.tensor(cfg["mean"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(cfg["std"], dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.n_layers = self._count_layers()
        layer = options.layer
        if layer is not None:
            if self.n_layers is None:
                raise SjalignError(f"{self.where}: this model has no forward_intermediates, so --layer is not "
                                   "supported")
            if layer != "all" and not (isinstance(layer, int) and 1 <= layer <= self.n_layers):
                raise SjalignError(f"{self.where}: --layer {layer} out of range (1..{self.n_layers}, or all)")
        with torch.no_grad():  # one dummy image: the real output width, and an early failure if any
            probe = torch.zeros(1, self.channels, self.height, self.width)
            try:
                self.num_features = int(self.embed_batch(probe).shape[1])
            except RuntimeError as exc:  # e.g. an image too small for the network's strides
                if options.image_size is None:
                    raise
                raise SjalignError(f"{self.where}: cannot run at --image-size {options.image_size}: "
                                   f"{str(exc).splitlines()[0]}") from None

    @classmethod
    def from_spec(cls, arg: str, options: EncoderOptions) -> "TimmEncoder":
        where = f"timm:{arg}"
        if arg.startswith("local-dir:"):
            arg = "@" + arg[len("local-dir:"):]
        name, sep, weights = arg.partition("@")
        if not sep or not weights:
            raise SjalignError(f"{where}: give weights (nothing is downloaded): timm:NAME@FILE.safetensors, "
                               "timm:NAME@DIR (timm local-dir folder) or timm:NAME@random")
        check_pooling(options.pooling, num_prefix=1, where=where)  # cls is checked against the model below
        if options.dtype not in ("fp32", "bf16"):
            raise SjalignError(f"{where}: --dtype '{options.dtype}': use fp32 or bf16")
        model, name, weights = build_model(name, weights, where=where)
        check_pooling(options.pooling, num_prefix=int(getattr(model, "num_prefix_tokens", 0) or 0),
                      where=f"timm:{name}")
        return cls(model, name, weights, options)

    # -- helpers ---------------------------------------------------------------------------

    def _count_layers(self) -> int | None:
        if not hasattr(self.model, "forward_intermediates"):
            return None
        info = getattr(self.model, "feature_info", None)
        if info is not None:
            try:
                return len(info)
            except TypeError:
                pass
        return None

    def _autocast(self):
        return autocast(self.device, self.options.dtype)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> the model's normalised input on the encoder's device."""
        if not isinstance(images, torch.Tensor):
            raise SjalignError(f"{self.where}: expected an image tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise SjalignError(f"{self.where}: expected images of shape (B, C, H, W), got {tuple(images.shape)}")
        c = images.shape[1]
        if c not in (1, self.channels):
            raise SjalignError(f"{self.where}: images have {c} channels but the model expects {self.channels}")
        x = images.to(self.device, dtype=torch.float32, non_blocking=True)
        size = (self.height, self.width)
        if c == 1 and self.channels != 1:
            # resize the one grayscale channel before repeating it: same result, a third of the work
            x = prepare_images(x, size=size, mean=(0.0,), std=(1.0,), channels=1, interpolation=self.interpolation)
            x = x.expand(-1, self.channels, -1, -1)
            return ((x - self.mean) / self.std).contiguous()
        return prepare_images(x, size=size, mean=self.mean.flatten().tolist(), std=self.std.flatten().tolist(),
                              channels=self.channels, interpolation=self.interpolation)

    def _pool_map(self, x: torch.Tensor) -> torch.Tensor:
        """A (B, C, H, W) feature map -> (B, C) mean, or (B, H·W·C) tokens."""
        if self.options.pooling == "tokens":
            return x.flatten(2).transpose(1, 2).flatten(1)
        if self.options.pooling == "cls":
            pool_tokens(x[:, :1, 0], "cls", num_prefix=0, where=self.where)  # raises
        return x.mean((2, 3))

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(x)
        if feats.ndim == 3:  # ViT-like tokens (B, N, D)
            return pool_tokens(feats, self.options.pooling, num_prefix=self.num_prefix, where=self.where)
        if feats.ndim == 4:
            if self.options.pooling == "mean":
                return self.model.forward_head(feats, pre_logits=True)
            return self._pool_map(feats)
        if feats.ndim == 2:
            return feats
        raise SjalignError(f"{self.where}: unsupported feature shape {tuple(feats.shape)}")

    def _intermediates(self, x: torch.Tensor, indices) -> list[torch.Tensor]:
        params = inspect.signature(self.model.forward_intermediates).parameters
        kwargs = {"indices": indices, "intermediates_only": True}
        tokens = self.num_prefix > 0 and "return_prefix_tokens" in params
        if tokens:
            kwargs.update(return_prefix_tokens=True, output_fmt="NLC")
        out = self.model.forward_intermediates(x, **kwargs)
        pooled = []
        for item in out:
            if isinstance(item, (tuple, list)):  # (patch tokens, prefix tokens)
                patches, prefix = item
                h = torch.cat([prefix, patches], dim=1) if prefix is not None else patches
                pooled.append(pool_tokens(h, self.options.pooling, num_prefix=self.num_prefix, where=self.where))
            elif item.ndim == 3:
                n_prefix = self.num_prefix if tokens else 0
                pooled.append(pool_tokens(item, self.options.pooling, num_prefix=n_prefix, where=self.where))
            elif item.ndim == 4:
                pooled.append(self._pool_map(item))
            else:
                raise SjalignError(f"{self.where}: unsupported intermediate shape {tuple(item.shape)}")
        return pooled

    # -- the Encoder protocol -------------------------------------------------------------------

    @torch.no_grad()
    def embed_batch(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images)
        layer = self.options.layer
        with self._autocast():
            if layer is None:
                z = self._final(x)
            elif layer == "all":
                z = self._intermediates(x, None)[-1]
            else:
                z = self._intermediates(x, [layer - 1])[0]
        return z.float().cpu()

    @torch.no_grad()
    def embed_batch_layers(self, images: torch.Tensor) -> list[torch.Tensor]:
        """One (B, d_k) tensor per intermediate (CNN stage or ViT block), in depth order."""
        if self.n_layers is None:
            raise SjalignError(f"{self.where}: this model has no forward_intermediates, so --layer all is not "
                               "supported")
        x = self.preprocess(images)
        with self._autocast():
            return [z.float().cpu() for z in self._intermediates(x, None)]

    def describe(self) -> dict:
        layer = "final" if self.options.layer is None else str(self.options.layer)
        config = {"model": self.name, "weights": self.weights, "num_prefix_tokens": self.num_prefix,
                  "n_layers": self.n_layers, "data_config": self.data_config}
        return {"layer": layer, "pooling": self.options.pooling, "config": config}
