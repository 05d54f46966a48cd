"""Data sets: loaders that return raw tables, and the encoding/splitting shared by all of them."""
