"""Pseudo-labels for G-SimCLR: k-means on the latent space of a denoising autoencoder.

Chakraborty, Gosthipaty & Paul, "G-SimCLR: Self-Supervised Contrastive Learning with Guided
Projection via Pseudo Labelling", ICDM Workshops 2020, Sec. III. A denoising autoencoder
(Vincent et al. 2008) is trained on the unlabeled images to reconstruct each image ``x`` from a
corrupted copy::

    x_noisy = clip(x + sigma * eps, 0, 1),  eps ~ N(0, I)
    loss    = mean || D(E(x_noisy)) - x ||^2

and k-means on the latent codes ``E(x)`` of the clean images gives every image a pseudo-class.
:class:`~contrastkit.modalities.image.sampling.spread_batches.SpreadBatchSampler` then keeps images of one
pseudo-class apart in the SimCLR batches, so that fewer negatives are false ones.

The autoencoder here is small (two strided convolutions and a linear layer each way): it only has
to group images by their coarse appearance, and it trains in seconds on CIFAR-sized data.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contrastkit.engine.auxiliary import fit_auxiliary
from contrastkit.core.errors import ConfigError, DataError
from contrastkit.core.seeding import seeded


class DenoisingAutoencoder(nn.Module):
    """``E``: conv(3x3, s2)-ReLU-conv(3x3, s2)-ReLU-linear -> ``latent_dim``; ``D`` mirrors it with
    transposed convolutions and a sigmoid (pixels in [0, 1])."""

    def __init__(self, channels: int, image_size: int, latent_dim: int = 64, width: int = 32):
        super().__init__()
        if image_size < 4 or latent_dim < 1 or width < 1:
            raise ConfigError(
                f"The denoising autoencoder needs image_size >= 4, latent_dim >= 1 and width >= 1, got "
                f"{image_size}, {latent_dim}, {width}."
            )
        self.image_size = image_size
        self.reduced = (image_size + 3) // 4  # side after two stride-2 convolutions (padding 1)
        flat = 2 * width * self.reduced**2
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Flatten(), nn.Linear(flat, latent_dim),
        )
        self.decoder_input = nn.Linear(latent_dim, flat)
        self.decoder = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, channels, 4, stride=2, padding=1),
        )
        self.width = width

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        h = self.decoder_input(z).view(len(z), 2 * self.width, self.reduced, self.reduced)
        out = self.decoder(h)
        if out.shape[-1] != self.image_size:  # sides not divisible by 4
            out = F.interpolate(out, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return torch.sigmoid(out)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))


def _unit_float(images: Tensor) -> Tensor:
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise DataError(
            f"Pseudo-labelling expects square images (N, C, H, W), got shape {tuple(images.shape)}; "
            "resize the source (image_size option)."
        )
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def train_denoising_autoencoder(images: Tensor, epochs: int = 10, batch_size: int = 256, noise_std: float = 0.2,
                                latent_dim: int = 64, width: int = 32, lr: float = 1e-3,
                                seed: int = 0) -> tuple[DenoisingAutoencoder, list[float]]:
    """Train a :class:`DenoisingAutoencoder` on ``images`` (uint8 or float [0, 1], (N, C, H, W))
    with Adam; returns the model (eval mode) and the mean training loss of every epoch."""
    if epochs < 1 or noise_std < 0:
        raise ConfigError(f"Autoencoder epochs must be >= 1 and noise_std >= 0, got {epochs}, {noise_std}.")
    x = _unit_float(images)
    with seeded(seed):
        model = DenoisingAutoencoder(x.shape[1], x.shape[-1], latent_dim, width)

        def denoising_loss(rows: Tensor) -> Tensor:
            clean = x[rows]
            noisy = (clean + noise_std * torch.randn_like(clean)).clamp_(0.0, 1.0)
            return F.mse_loss(model(noisy), clean)

        history = fit_auxiliary(model.parameters(), denoising_loss, len(x), epochs=epochs, lr=lr,
                                batch_size=batch_size)
    return model.eval(), history


@torch.inference_mode()
def encode_images(model: DenoisingAutoencoder, images: Tensor, batch_size: int = 1024) -> np.ndarray:
    """Latent codes ``E(x)`` of the clean images, float32 (N, latent_dim)."""
    x = _unit_float(images)
    return torch.cat([model.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]).numpy()


def cluster_latents(latents: np.ndarray, num_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means (scikit-learn, k-means++, 10 restarts) on standardised latents; int64 labels (N,)."""
    from sklearn.cluster import KMeans

    if not 2 <= num_clusters <= len(latents):
        raise ConfigError(
            f"num_clusters must be between 2 and the number of images ({len(latents)}), got {num_clusters}."
        )
    # Standardised per dimension so that no single latent unit dominates the Euclidean distance.
    scaled = (latents - latents.mean(0)) / (latents.std(0) + 1e-8)
    return KMeans(num_clusters, n_init=10, random_state=seed).fit_predict(scaled).astype(np.int64)


def pseudo_labels(images: Tensor, num_clusters: int = 10, epochs: int = 10, seed: int = 0,
                  **autoencoder_options) -> np.ndarray:
    """G-SimCLR's pseudo-labels: train the denoising autoencoder on ``images``, k-means its latent
    codes into ``num_clusters`` groups; int64 (N,). ``autoencoder_options`` go to
    :func:`train_denoising_autoencoder` (batch_size, noise_std, latent_dim, width, lr)."""
    model, _ = train_denoising_autoencoder(images, epochs=epochs, seed=seed, **autoencoder_options)
    return cluster_latents(encode_images(model, images), num_clusters, seed)
