"""What each stage's output depends on in the config: `run` redoes a stage when that part
changed (stages.run, store.is_current), train's resume state is fingerprinted by it, and the
stages after train refuse overrides that contradict the model they read."""

from __future__ import annotations

# the config sections (or dotted keys) each stage's output depends on besides its inputs (and,
# for preprocess, the raw files: data/sources.py): `run` redoes a stage when one of them
# changed, as make would. embed adds the freshness prior to the vectors; evaluate samples users
# with `seed` and picks EASE's lambda on validation recall@train.early_stop_k
SECTIONS = {
    "preprocess": ("dataset",),
    "sample": ("dataset", "sampler", "exposures", "fit_on", "seed"),
    "train": ("dataset", "sampler", "exposures", "fit_on", "model", "train", "loss", "seed"),
    "embed": ("eval.freshness_prior",),
    "index": ("index",),
    "evaluate": ("eval", "index", "seed", "train.early_stop_k"),
}
# keys that bound how a stage runs, not what it writes: a change does not make outputs stale
NOT_OUTPUT = ("dataset.engine_memory",)
# what a trained model was made with: embed, index, evaluate and export refuse an override of
# these that contradicts the model they read (not writing it into their manifests), except the
# keys that say how training ran, not what it trained
MODEL_MADE_WITH = ("dataset", "model", "train", "loss")
HOW_TRAINED = tuple(f"train.{k}" for k in ("resume", "backend", "dist_timeout_s", "nproc",
                                            "device"))  # fmt: skip


def output_view(stage: str, config: dict, ignore: tuple = ()) -> dict:
    """The part of a resolved config that `stage`'s output depends on (SECTIONS less
    NOT_OUTPUT and the `section.key`s in `ignore`): what `run` compares with the config the
    output was made with."""
    view = {}
    for key in SECTIONS[stage]:
        value = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        view[key] = value
    for key in (*NOT_OUTPUT, *ignore):
        section, _, rest = key.partition(".")
        if isinstance(view.get(section), dict):
            view[section] = {k: v for k, v in view[section].items() if k != rest}
    return view
