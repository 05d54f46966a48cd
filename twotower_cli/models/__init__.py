"""Tower variants, one file each, built from the shared blocks in `blocks.py`."""
