"""contrastkit: self-supervised representation learning with contrastive and related objectives."""

__version__ = "0.1.0"
