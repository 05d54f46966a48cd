"""The speed and scale benchmark (`make bench`); see bench/run.py."""
