"""`twotower serve`: the HTTP API on a small trained run, online == offline, bad requests,
request encoding, reload on SIGHUP."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from twotower_cli import serve
from twotower_cli.core.settings import HISTORY
from twotower_cli.data.tables import Field


def test_user_encoder_follows_the_saved_vocabularies_and_scaling():
    fields = [Field("user", "categorical", 3), Field("city", "categorical", 3),
              Field("tags", "multihot", 4, 3), Field("income", "numeric")]  # fmt: skip
    vocabs = {"user": [10, 20], "city": ["7", "Oslo"], "tags": ["a", "b", "c"],
              "income": [100.0, 20.0]}  # fmt: skip
    users = pd.DataFrame({"user": [1, 2], "city": [2, 1], "tags": [[1, 2, 0], [3, 0, 0]],
                          "income": np.array([0.5, -1.0], np.float32)})  # fmt: skip
    enc = serve.UserEncoder(fields, vocabs, users, ["i1", "i2"])
    queries = [serve.UserQuery({"user_id": 20}),
               serve.UserQuery({"user_id": 10, "city": 7, "tags": ["c", "zz", "a"],
                                "income": 130}),
               serve.UserQuery({"city": "Bergen", "income": None})]  # fmt: skip
    feats = enc.encode(queries, None)
    # row 0: user 20's stored profile as it is; row 1: user 10 with every value replaced
    # (7 -> "7" = id 1; unseen "zz" dropped; (130 - 100) / 20 = 1.5); row 2: all unknown
    assert feats["user"].tolist() == [2, 1, 0]
    assert feats["city"].tolist() == [1, 1, 0]
    assert feats["tags"].tolist() == [[3, 0, 0], [3, 1, 0], [0, 0, 0]]
    assert feats["income"].tolist() == [-1.0, 1.5, 0.0]
    # the stored profile itself is untouched by request overrides
    assert enc.profiles["city"].tolist() == [0, 2, 1]
    with pytest.raises(serve.RequestError, match="user.income: expected a number"):
        enc.encode([serve.UserQuery({"income": "rich"})], None)


def test_history_input_comes_from_the_request_or_the_stored_items():
    fields = [Field("user", "categorical", 3)]
    users = pd.DataFrame({"user": [1, 2]})
    enc = serve.UserEncoder(fields, {"user": ["u1", "u2"]}, users, ["a", "b", "c", "d"], 3)
    # stored (oldest first): u1 saw items 2, 4, 1, 3 (dense ids); u2 nothing
    seen = pd.DataFrame({"user": [1, 1, 1, 1], "item": [2, 4, 1, 3], "timestamp": [1, 2, 3, 4]})
    stored = serve.csr(seen, 2)
    queries = [serve.UserQuery({"user_id": "u1"}), serve.UserQuery({"user_id": "u2"}),
               serve.UserQuery({"user_id": "u1"}, history=["d", "zz", "a"])]  # fmt: skip
    hist = enc.encode(queries, stored)[HISTORY]
    # the latest three, most recent last, left-padded: u1 -> 4, 1, 3; u2 -> none; the request's
    # history replaces the stored one, unknown "zz" dropped: d=4, a=1
    assert hist.tolist() == [[4, 1, 3], [0, 0, 0], [0, 4, 1]]


def test_top_drops_exclusions_and_missing_rows_and_keeps_each_items_score():
    from twotower_cli.serve.recommend import _top

    # faiss rows -> dense items (row + 1): row 0 finds items 4, 1, 3 and one missing (-1);
    # row 1 finds 2, 3, 1, 4. Excluded: row 0 item 1; row 1 items 2 and 4. With n_items = 4 a
    # key is row * 5 + item: 0 * 5 + 1 = 1, 1 * 5 + 2 = 7, 1 * 5 + 4 = 9.
    I = np.array([[3, 0, 2, -1], [1, 2, 0, 3]])
    D = np.array([[0.9, 0.8, 0.7, -3e38], [0.6, 0.5, 0.4, 0.3]], dtype=np.float32)
    items, scores, keep = _top(D, I, np.array([1, 7, 9]), n_items=4, k=3)
    # row 0 keeps 4 (0.9) and 3 (0.7); row 1 keeps 3 (0.5) and 1 (0.4); the third slot is empty
    assert keep.tolist() == [[True, True, False], [True, True, False]]
    assert items[keep].tolist() == [4, 3, 3, 1]
    np.testing.assert_allclose(scores[keep], [0.9, 0.7, 0.5, 0.4])
