"""Capture a model's activations at one module into a store (`python -m harness.capture`; the
capture itself is harness.data.capture)."""
