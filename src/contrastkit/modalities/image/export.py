"""Export a trained encoder as ``model.safetensors`` + ``config.json``, and reload it without
contrastkit's training code.

The exported encoder is what ``contrastkit embed`` computes: the method's backbone applied to the
eval view of the images,

    f(x) = backbone((x / 255 - mean) / std)        for uint8 x of shape (B, C, H, W)

(a float x is taken as already in [0, 1], as the eval view does). ``config.json`` names the
architecture so that :func:`load_exported` rebuilds it with :func:`contrastkit.modalities.image.encoders.build_encoder`;
the weights are plain tensors in safetensors (no pickle, so loading runs no code). Loading needs
only ``torch``, ``safetensors`` and ``contrastkit.modalities.image.encoders`` — not Lightning, the methods or the
training loop.

Text encoders are exported as sentence-transformers folders by :mod:`contrastkit.modalities.text.export`
(``contrastkit export --text-model FOLDER``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from contrastkit.modalities.image.encoders import build_encoder
from contrastkit.core.errors import ConfigError, DataError

FORMAT = "contrastkit-image-encoder"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CONFIG_KEYS = ("architecture", "in_channels", "image_size", "width", "mean", "std", "output_dim")


class ExportedEncoder(nn.Module):
    """``backbone((x / 255 - mean) / std)``: an image encoder with its input normalisation.

    Args:
        backbone: an encoder from :mod:`contrastkit.modalities.image.encoders` (it has ``output_dim``).
        mean, std: per-channel statistics of the training images in [0, 1] (the eval view's).
    """

    def __init__(self, backbone: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        if len(mean) != len(std):
            raise ConfigError(f"ExportedEncoder: {len(mean)} mean values but {len(std)} std values; "
                              f"give one of each per channel.")
        self.backbone = backbone
        self.channels = len(mean)
        self.output_dim = backbone.output_dim
        # Not persistent: config.json carries them; model.safetensors holds only the backbone.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise DataError(f"The exported encoder expects images of shape (B, {self.channels}, H, W), "
                            f"got {tuple(images.shape)}.")
        if images.dtype == torch.uint8:
            x = images.float().div_(255.0)  # the same operations as the eval view, for equal bits
        elif images.is_floating_point():
            x = images.float()
        else:
            raise DataError(f"The exported encoder expects uint8 (0-255) or float (0-1) images, "
                            f"got dtype {images.dtype}.")
        return self.backbone((x - self.mean) / self.std)

    def save_pretrained(self, folder: str | Path, architecture: str, image_size: int, width: float,
                        **description) -> Path:
        """Write ``model.safetensors`` (the backbone's weights) + ``config.json`` (the architecture that
        :func:`load_exported` and ``contrastkit.load`` rebuild, the normalisation, and ``description``'s
        extra keys, e.g. the method) into ``folder``. Returns it."""
        settings = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "architecture": architecture,
            "in_channels": self.channels,
            "image_size": int(image_size),
            "width": width,
            "mean": self.mean.flatten().tolist(),  # float32 -> Python float -> float32 is exact
            "std": self.std.flatten().tolist(),
            "output_dim": self.output_dim,
            **description,
            "input": "images (B, in_channels, H, W): uint8 0-255, or float already in [0, 1]",
        }
        # safetensors refuses tensors that share storage; a contiguous copy of each is what we want anyway.
        state = {name: tensor.detach().contiguous().clone() for name, tensor in self.backbone.state_dict().items()}
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(state, folder / WEIGHTS_FILE, metadata={"format": FORMAT})
        (folder / CONFIG_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        return folder


def load_exported(out_dir: str | Path, map_location: str | torch.device = "cpu") -> ExportedEncoder:
    """The encoder written by :func:`export_encoder` into ``out_dir``, in eval mode."""
    folder = Path(out_dir)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise DataError(f"'{path}' does not exist: an exported encoder is a folder with {CONFIG_FILE} and "
                            f"{WEIGHTS_FILE}, written by 'contrastkit export'.")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"'{config_path}' is not valid JSON ({exc}); export the encoder again.") from None
    missing = [key for key in CONFIG_KEYS if key not in config]
    if config.get("format") != FORMAT or missing:
        raise DataError(f"'{config_path}' is not the config of a contrastkit encoder export "
                        f"(format {config.get('format')!r}, missing keys {missing}).")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise DataError(f"'{config_path}' has format_version {config['format_version']}, newer than this "
                        f"contrastkit reads ({FORMAT_VERSION}); upgrade contrastkit.")
    backbone = build_encoder(config["architecture"], in_channels=int(config["in_channels"]),
                             image_size=int(config["image_size"]), width=float(config["width"]),
                             **(config.get("backbone_options") or {}))
    try:
        backbone.load_state_dict(load_file(weights_path, device=str(map_location)))
    except (RuntimeError, OSError) as exc:
        raise DataError(f"The weights in '{weights_path}' do not fit the architecture "
                        f"'{config['architecture']}' of '{config_path}' ({exc}).") from None
    encoder = ExportedEncoder(backbone, config["mean"], config["std"]).to(map_location)
    if encoder.output_dim != int(config["output_dim"]):
        raise DataError(f"'{config_path}' says output_dim {config['output_dim']}, but the rebuilt "
                        f"'{config['architecture']}' gives {encoder.output_dim}.")
    return encoder.eval()


def export_encoder(checkpoint_path: str | Path, out_dir: str | Path, overwrite: bool = False, *,
                   trust_checkpoint: bool = False) -> Path:
    """Write the encoder of a `fit` checkpoint to ``out_dir`` (``model.safetensors`` + ``config.json``).

    The checkpoint is read without running code; ``trust_checkpoint=True`` reads one that carries
    code, and so runs that code (see :mod:`contrastkit.core.safe_loading`).

    The export is checked before returning: the reloaded encoder must reproduce the method's own
    ``embed`` bit for bit on a probe batch, so that a method whose representation is not
    ``backbone(eval_view(x))`` is refused rather than exported wrongly. Returns ``out_dir``.
    """
    from contrastkit.modalities.image.methods.parts import backbone_name
    from contrastkit.modalities.image.training.restore import (
        load_method,  # training code only on the export side
    )

    folder = Path(out_dir)
    if not overwrite and ((folder / WEIGHTS_FILE).exists() or (folder / CONFIG_FILE).exists()):
        raise ConfigError(f"'{folder}' already holds an exported encoder; nothing is overwritten. "
                          f"Choose another output folder (or pass overwrite=True / --overwrite).")
    method, config, data = load_method(checkpoint_path, trust_checkpoint=trust_checkpoint)
    backbone, eval_view = getattr(method, "backbone", None), getattr(method, "eval_view", None)
    if backbone is None or eval_view is None:
        raise ConfigError(f"Method '{config.method}' has no single backbone behind its eval view (its "
                          f"representation is computed differently), so it cannot be exported as an image "
                          f"encoder yet. Use 'contrastkit embed' with the checkpoint instead.")
    normalize = eval_view.normalize
    exported = ExportedEncoder(backbone, normalize.mean.flatten().tolist(), normalize.std.flatten().tolist())
    # A ViT's patch size, pooling and positions, so that load_exported rebuilds the same architecture.
    options = backbone.architecture_options() if hasattr(backbone, "architecture_options") else {}
    architecture, width = backbone_name(config.backbone, data.image_size), config.width
    if config.backbone == "auto" and hasattr(backbone, "size_options"):
        # A ViT that its method sized (mae, jepa, msn without --backbone): no registered name builds
        # it, so the export names its explicit size and the encoder "vit" rebuilds it.
        architecture, width, options = "vit", 1.0, {**backbone.size_options(), **options}
    exported.save_pretrained(folder, architecture, data.image_size, width, method=config.method,
                             **({"backbone_options": options} if options else {}))

    probe = torch.randint(0, 256, (2, data.channels, data.image_size, data.image_size), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, reloaded = method.embed(probe), load_exported(folder)(probe)
    if not torch.equal(expected, reloaded):
        raise ConfigError(f"The exported encoder in '{folder}' does not reproduce the embeddings of method "
                          f"'{config.method}' (largest difference {(expected - reloaded).abs().max():.3g}); "
                          f"this method cannot be exported as backbone + normalisation.")
    return folder
