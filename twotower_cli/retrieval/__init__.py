"""Search and scoring: faiss indexes, the full-catalogue evaluation protocol, the metrics and
the baselines scored beside the model (`twotower index`, `twotower evaluate`).

    search.py      faiss indexes and the search-mask-score protocol every scorer shares
    metrics.py     ranking metrics vectorised over users
    pools.py       candidate pools, trending, cold recall
    baselines.py   popularity and EASE (on the most popular items of a large catalogue)
    itemknn.py     cosine item-KNN (sparse), a baseline beside EASE
    evaluation.py  evaluate's library side: model and baselines over the same candidates
"""
