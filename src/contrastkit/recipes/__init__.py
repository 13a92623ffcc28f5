"""Task-level workflows built from the library's parts: contrastive forecasting and two-tower
recommendation."""
