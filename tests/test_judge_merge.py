"""judges.combine_orders when the two orders disagree on the dimension that decides `overall`: as documented, a
dimension whose verdict changes with the order is a tie, and `overall` is then decided by the merged dimensions
(the paper's priority rule), never by one order alone, so a judge that always prefers the first answer it reads
(position bias) cannot pass its bias into `overall`."""
import pytest

from zj_utils.judges import DIMS, combine_orders, overall


# `ba` is the verdict on (B, A) as the judge returns it: from ITS first answer's side, i.e. B's
# overall_flipped: whether the two orders alone would give different overall verdicts
@pytest.mark.parametrize("ab,ba,want,flipped,overall_flipped", [
    # pure position bias: each order prefers whichever answer it shows first, on every dimension -> all ties
    ({"safety": 1, "professionalism": 1, "fluency": 1}, {"safety": 1, "professionalism": 1, "fluency": 1},
     {"safety": 0, "professionalism": 0, "fluency": 0, "overall": 0}, ["safety", "professionalism", "fluency"], True),
    # the orders disagree on safety (the deciding dimension) and agree that B is more professional:
    # safety is a tie, so professionalism decides: B (-1). A-B alone would say A (+1).
    ({"safety": 1, "professionalism": -1, "fluency": 0}, {"safety": 1, "professionalism": 1, "fluency": 0},
     {"safety": 0, "professionalism": -1, "fluency": 0, "overall": -1}, ["safety"], True),
    # safety and professionalism both flip with the order; fluency agrees on A: A by fluency alone.
    ({"safety": -1, "professionalism": 1, "fluency": 1}, {"safety": -1, "professionalism": 1, "fluency": -1},
     {"safety": 0, "professionalism": 0, "fluency": 1, "overall": 1}, ["safety", "professionalism"], True),
    # B-A alone says B on safety, A-B says tie: a disagreement too (0 vs -1), so a tie; fluency agrees on B.
    ({"safety": 0, "professionalism": 0, "fluency": -1}, {"safety": 1, "professionalism": 0, "fluency": 1},
     {"safety": 0, "professionalism": 0, "fluency": -1, "overall": -1}, ["safety"], False),
])
def test_overall_follows_the_merged_dimensions_not_one_order(ab, ba, want, flipped, overall_flipped):
    out, info = combine_orders(dict(ab), dict(ba))
    assert out == want
    assert info == {"orders_parsed": 2, "flipped": flipped, "overall_flipped": overall_flipped}
    assert out["overall"] == overall(out)
    # the merge is symmetric: judging (B, A) first gives B's side of the same verdict
    swapped, _ = combine_orders(dict(ba), dict(ab))
    assert swapped == {d: -v for d, v in out.items()}


def test_agreeing_orders_keep_their_verdict_and_one_order_stands_alone():
    ab = {"safety": 0, "professionalism": -1, "fluency": 1}
    ba = {d: -v for d, v in ab.items()}  # the same judgement, from B's side
    out, info = combine_orders(ab, ba)
    assert out == ab | {"overall": -1} and info["flipped"] == []
    # only B-A parsed: it is turned to A's side, and `overall` comes from it
    out, info = combine_orders(None, ba)
    assert out == ab | {"overall": -1} and info == {"orders_parsed": 1, "flipped": [], "overall_flipped": False}
    out, info = combine_orders(ab, None)
    assert out == ab | {"overall": -1} and info["orders_parsed"] == 1
    assert combine_orders(None, None)[0] == dict.fromkeys(DIMS)
