"""The user tower on its own, for serving here or elsewhere (`twotower export`; below serve,
which runs the same user tower per request).

    user_tower.py  positional ONNX inputs, the exporter, the runtimes (onnxruntime, torch)
    bundle.py      `twotower export`: the ONNX user tower, item vectors, index, vocabularies
"""
