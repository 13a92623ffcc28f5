"""G-SimCLR's guided batches: pseudo-labels from a denoising autoencoder + k-means, and batch
samplers that keep each pseudo-class spread out."""
