"""The raw files' identity (data/sources.py, issue 26.1): which files each loader reads, and when
a file counts as changed (a stat that moved alone costs a hash, other bytes are a change)."""

from __future__ import annotations

import os
from pathlib import Path

from twotower_cli.data import sources


def test_each_loader_names_the_files_it_reads(tmp_path: Path):
    news = tmp_path / "news"
    news.mkdir()
    for name in ("user_info_data_5w.csv", "doc_info.txt", "train_data_5w.csv", "notes.txt"):
        (news / name).write_text("x")
    assert [p.name for p in sources.raw_files({
        "_target_": "twotower_cli.data.news.load", "raw_dir": str(news), "keywords": 0,
    })] == ["user_info_data_5w.csv", "doc_info.txt", "train_data_5w.csv"]  # fmt: skip
    ml = {"_target_": "twotower_cli.data.movielens.load", "raw_dir": str(tmp_path / "raw")}
    assert sources.raw_files(ml) == []  # not fetched yet: preprocess records it once fetched
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "ml-100k.zip").write_bytes(b"zip")
    assert sources.raw_files(ml) == [tmp_path / "raw" / "ml-100k.zip"]
    log = tmp_path / "log.csv"
    log.write_text("u,i\n")
    csv = {"_target_": "twotower_cli.data.csv_data.load", "interactions": str(log),
           "users": None, "items": str(tmp_path / "missing.csv")}  # fmt: skip
    assert sources.raw_files(csv) == [log]
    assert sources.raw_files({"_target_": "twotower_cli.data.synthetic.load"}) == []
    ml1m = {"_target_": "twotower_cli.data.movielens1m.load", "raw_dir": str(tmp_path / "raw")}
    assert sources.raw_files(ml1m) == []
    (tmp_path / "raw" / "ml-1m").mkdir()
    for name in ("ml-1m.inter", "ml-1m.user", "ml-1m.item"):
        (tmp_path / "raw" / "ml-1m" / name).write_text("x")
    assert [p.name for p in sources.raw_files(ml1m)] == ["ml-1m.inter", "ml-1m.user", "ml-1m.item"]


def test_a_file_is_changed_only_when_its_bytes_are(tmp_path: Path):
    log = tmp_path / "log.csv"
    log.write_text("a,b\n1,2\n")
    recorded = sources.identify([log])
    assert sources.changed(recorded, [log]) is None
    os.utime(log, ns=(1, 2))  # another mtime, same bytes: hashed, still the same file
    assert sources.changed(recorded, [log]) is None
    log.write_text("a,b\n1,3\n")  # same size, other bytes
    os.utime(log, ns=(recorded[0]["mtime_ns"],) * 2)  # and the old mtime
    assert sources.changed(recorded, [log]) == f"{log} changed since it was read"
    assert sources.changed(recorded, [log, log]) == "other raw files than it read"
    assert sources.changed(None, [log]) == "no record of the raw files it read"
    log.unlink()
    assert sources.changed(recorded, [log]) == f"{log} is gone"
