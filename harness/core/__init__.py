"""The core: activation stores and batches, the sparse autoencoder and its sparse backward, the
one shared trainer, and the metric definitions (docs/metrics.md) everything else reports."""
