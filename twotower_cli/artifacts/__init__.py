"""What stages leave behind and how it is trusted (above core, data and models).

store.py       stage dirs written aside and moved into place, manifests, lineage checks
swap.py        the move into place: a journal and a backup, so a kill mid-move loses nothing
fields.py      the types of a manifest's fields and output names, checked on every read
checkpoint.py  the self-describing `model.pt` (weights, tower key, vocab sizes, config)
tracking.py    experiment tracking (`tracking=none|mlflow`)
"""
