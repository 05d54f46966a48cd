"""The benchmark's sections, one module each, picked by `python -m bench.run --sections`; each
has a `section` function returning bench.json's keys for it (docs/bench.md lists them).

    train.py  trainer.train against the per-row DataLoader loop, and the step's FLOP rate
    eval.py   evaluation against the per-user loop, and the exact search against torch.mm
    ann.py    faiss indexes against exact search on a trained model's million item vectors
    peers.py  torch-rechub's DSSM beside twotower's default on MovieLens-100K
    dist.py   `twotower train` samples/s at train.nproc 1 and 2, and where a step goes
    scale.py  the six stages at growing data sizes, seconds and peak memory per stage
"""
