"""Making activation stores: capture from real models, and synthetic data with planted
features (ground truth)."""
