"""How big each section of the benchmark runs (`python -m bench.run`): `Sizes()` for
`make bench`, `QUICK` for `--quick` (a couple of minutes)."""

from __future__ import annotations

from dataclasses import dataclass, field

# the DSSM every section has always timed (the groups' defaults before 7 Dec 2026): 32-dim
# fields, dropout 0.1, temperature 0.05, lr 3e-3, in-batch negatives only, no user history and
# no weight decay. The defaults have moved since (docs/defaults.md); a `twotower` run of the
# bench passes these so its numbers stay comparable across dates (bench/data.py builds the same)
PLAIN_DSSM = ["model.history=false", "model.embed_dim=32", "model.dropout=0.1",
              "model.temperature=0.05", "train.lr=0.003", "train.weight_decay=0",
              "sampler.n_uniform=0"]  # fmt: skip


@dataclass
class Sizes:
    """How big each section runs; --quick shrinks everything to a couple of minutes."""

    data: dict = field(default_factory=lambda: {"n_users": 50_000, "n_items": 20_000,
                                                "n_interactions": 1_000_000})  # fmt: skip
    batch_size: int = 1024
    # both sides of the train comparison and the scale runs use the lazy Adam on embeddings
    sparse_embeddings: bool = True
    # 50 steps of 1024 per round (8 rounds: 410k of the 462k training positives, each used
    # once); at 20 steps the per-round validation and set-up were a quarter of our time
    train_steps: int = 50
    train_rounds: int = 8
    reference_users: int = 1000
    # ann: a DSSM trained one epoch by `twotower run dataset=synthetic` on ann_items items
    ann_items: int = 1_000_000
    ann_users: int = 20_000
    ann_interactions: int = 1_500_000
    ann_clusters: int = 200
    ann_queries: int = 10_000
    # int: nprobe (IVF) or efSearch (HNSW); str: faiss ParameterSpace settings
    ann_candidates: dict = field(
        default_factory=lambda: {
            # 8-bit scalar codes: recall@50 0.973 at nprobe 32, 21x Flat, 70 MiB (1 Dec). 4-bit
            # PQ ranks trained vectors too coarsely for its refine: 2 dimensions a code
            # (PQ32x4fs) held 0.44-0.55 at k_factor_rf 4-8 and 0.80 at 64, 1 dimension a code
            # 0.80-0.86 at 16-32, 0.947 at 64 (docs/bench.md)
            "IVF4096,SQ8": [32, 64],
            "IVF4096,PQ64x4fs,Refine(SQ8)": ["nprobe=32,k_factor_rf=32"],
            "IVF4096,Flat": [16, 32, 64],
            "HNSW32": [128, 256, 512],
        }
    )  # fmt: skip
    scale: tuple = (1_000_000, 3_000_000, 10_000_000, 100_000_000)
    scale_items: int = 50_000
    # (n_users, n_items) of a size; the others have n // 20 users and scale_items items
    scale_shapes: dict = field(default_factory=lambda: {100_000_000: (3_000_000, 500_000)})
    # the stages a size runs (default: all six)
    scale_stages: dict = field(default_factory=dict)
    # (train.valid_max_users, eval.max_users) of a size (default: every user): at 100M, an
    # exact search of 3M users over 500k items would take hours on 2 cores
    scale_users: dict = field(default_factory=lambda: {100_000_000: (20_000, 50_000)})
    scale_epochs: int = 1
    # train.max_steps of the scale runs, so the largest stays well under an hour
    scale_max_steps: int = 2000
    repeats: int = 3
    # dist: epochs per `twotower train` run (each run's rate is its median epoch)
    dist_epochs: int = 2


QUICK = Sizes(
    data={"n_users": 5000, "n_items": 3000, "n_interactions": 100_000},
    train_steps=3,
    train_rounds=4,
    reference_users=300,
    ann_items=100_000,
    ann_users=3000,
    ann_interactions=100_000,
    ann_clusters=50,
    ann_queries=2000,
    ann_candidates={
        "IVF256,SQ8": [16],
        "IVF256,PQ64x4fs,Refine(SQ8)": ["nprobe=16,k_factor_rf=16"],
        "IVF256,Flat": [8, 16],
        "HNSW32": [128],
    },  # fmt: skip
    scale=(30_000, 100_000, 300_000),
    scale_items=5000,
    scale_shapes={},
    scale_stages={},
    scale_users={},
    scale_epochs=1,
    scale_max_steps=50,
    repeats=3,
    dist_epochs=2,
)
