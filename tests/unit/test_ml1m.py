"""MovieLens-1M's loader and the protocols end to end, on a tiny fixture in the wheel's atomic
format (tests/data/ml1m_tiny: CRLF lines, `1m_` user prefixes, items keyed by title); the real
download is never used here."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import ML1M_TINY

from twotower_cli.core.errors import TwoTowerError
from twotower_cli.data import movielens1m


def test_the_wheels_copy_parses_to_grouplens_ids_and_features():
    raw = movielens1m.load(ML1M_TINY, verify=False)
    # 174 ratings by 15 users of 13 of the 14 movies (Nosferatu, row 13, is never rated)
    assert raw.counts == {"ratings": 174, "users": 15, "items": 14, "rated_items": 13}
    inter, users, items = raw.interactions, raw.users, raw.items
    assert sorted(inter["user_id"].unique()) == list(range(1, 16))  # `1m_` dropped
    # items numbered by their row in ml-1m.item: Shaft (2000), row 14, rated by users 1..3
    assert sorted(inter.loc[inter["item_id"] == 14, "user_id"]) == [1, 2, 3]
    u2 = users.set_index("user_id").loc[2]  # 1m_2: age 25 -> group 2, M, zip "18642" -> "18"
    assert (u2["age"], u2["gender"], u2["zip"]) == (2, "M", "18")
    heat = items.set_index("item_id").loc[3]  # "Action Crime Thriller", 1995 -> 5-year bucket
    assert heat["genres"] == ["Action", "Crime", "Thriller"] and heat["year"] == 1995
    assert items.set_index("item_id").loc[4, "year"] == 1940  # 1942: decades before 1990


def test_verify_names_the_source_and_the_counts_it_found():
    with pytest.raises(TwoTowerError, match=r"ml1m_tiny/ml-1m: counts \{'ratings': 174"):
        movielens1m.load(ML1M_TINY)


def test_an_unknown_title_is_one_line_naming_file_and_row(tmp_path: Path):
    copy = tmp_path / "ml-1m"
    shutil.copytree(ML1M_TINY / "ml-1m", copy)
    with (copy / "ml-1m.inter").open("a") as f:
        f.write("1m_1\tNo Such Film (1999)\t4\t978300000\n")
    with pytest.raises(TwoTowerError, match=r"ml-1m.inter: row 176 names an item missing from "
                       r"ml-1m.item: 'No Such Film \(1999\)'"):  # fmt: skip
        movielens1m.load(tmp_path, verify=False)
