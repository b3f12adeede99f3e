"""The reconciliation's own joins (pure): the same rows as pandas' merge, in the same order."""

from __future__ import annotations

import pandas as pd
from hypothesis import given, settings as hsettings, strategies as st

from planshift.domain.reconciliation import join, pairs, share_codes

keys = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=12)


def frame(values: list[str], name: str) -> pd.DataFrame:
    return pd.DataFrame({"k": pd.array(values, dtype="string[pyarrow]"), name: range(len(values))})


@hsettings(max_examples=200, deadline=None)
@given(left=keys, right=keys, how=st.sampled_from(["inner", "left"]), shared=st.booleans())
def test_join_matches_pandas_merge(left, right, how, shared):
    lf, rf = frame(left, "l"), frame(right, "r")
    expected = lf.merge(rf, on="k", how=how)
    if shared:  # with integer companions set up front, as the job does
        share_codes((lf, "k"), (rf, "k"))
    got = join(lf, rf, "k", how=how)
    assert rows(got) == rows(expected)


def rows(joined: pd.DataFrame) -> list[tuple]:
    return [tuple(None if pd.isna(v) else v for v in row)
            for row in joined[["k", "l", "r"]].astype(object).itertuples(index=False)]


def test_missing_keys_never_match_and_rows_can_be_restricted():
    lf = frame(["a", None, "b", "a"], "l")
    rf = frame([None, "a", "b", "a"], "r")
    li, ri = pairs(lf, rf, "k", how="left")
    assert list(zip(li, ri)) == [(0, 1), (0, 3), (1, -1), (2, 2), (3, 1), (3, 3)]
    li, ri = pairs(lf, rf, "k", left_rows=[3, 2], right_rows=[3])
    assert list(zip(li, ri)) == [(3, 3)]
