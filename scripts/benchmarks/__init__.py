"""What the bench scripts share: the held-out split they train on (heldout_split), sparsify's
step fed our batches (sparsify_step), the equal-time table (equal_time) and the architectures'
recipes and matched-L0 table (architecture_table)."""
