"""What stages leave behind and how it is trusted (above core, data and models).

store.py       stage dirs written aside and moved into place, manifests, lineage checks
checkpoint.py  the self-describing `model.pt` (weights, tower key, vocab sizes, config)
tracking.py    experiment tracking (`tracking=none|mlflow`)
"""
