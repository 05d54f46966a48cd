"""The stages wired to config (`twotower <stage>`): the only package that reads Hydra configs.

config.py  the config schema registered in Hydra's ConfigStore, value checks
prep.py    the preprocess stage alone: the data layer, no torch or faiss (cli routes it)
stages.py  one short function per stage: paths in, library call, artifacts + manifest out
sections.py what each stage's output depends on in the config (run's currency, refusals)
tune.py    `twotower tune`: search on validation, confirm, refit, evaluate
study.py   tune's search-space syntax, the seeded TPE sampler, the Optuna study
"""
