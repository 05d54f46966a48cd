"""The bottom layer: what every other package may use, and which imports nothing of twotower's
above it (the layer order is in tests/unit/test_imports.py).

    errors.py    the one-line errors the CLI prints (ConfigError, DataError, ...)
    keys.py      sorted int64 key sets, vectorised (the leaf)
    progress.py  progress bars for a terminal and for a log
    settings.py  settings dataclasses with bounds (model, train, eval, index, exposures)
    layout.py    the run tree: every stage's directory and artifact file names
    hashing.py   sha256 of a file (manifests' outputs, preprocess's raw inputs)
    launcher.py  whether this process is a torchrun worker (no torch needed to ask)
"""
