"""evaluate_many's Numba ranking kernel against a brute-force AP / U on blocks full of ties and crowded keys.

The kernel bins each negative by a bucket table over its query's positive keys; ties (a positive first), keys that
crowd one bucket, negatives equal to the lowest or highest positive and pairs that are both positive and negative
are the cases a table can get wrong.
"""
import numpy as np
import pandas as pd
import pytest

from phenovec.evaluate.evaluate_many import _build_rule, _counts, _rank_block


def brute_force(sim_row, pos, neg):
    """copairs' ranking: decreasing similarity, a positive before a negative on ties; AP and U."""
    keys = np.concatenate([sim_row[pos], sim_row[neg]])
    rel = np.concatenate([np.ones(pos.sum()), np.zeros(neg.sum())])
    order = np.lexsort([-rel, -keys])  # primary: key descending; ties: positive first
    rel = rel[order]
    tp = np.cumsum(rel)
    ap = (tp / np.arange(1, len(rel) + 1) * rel).sum() / rel.sum()
    u = sum(neg.sum() - (np.cumsum(1 - rel)[k]) for k in np.flatnonzero(rel))
    return ap, u


@pytest.mark.parametrize("levels", [3, 9, 1000])
def test_kernel_equals_brute_force_with_ties(levels):
    rng = np.random.default_rng(levels)
    n = 300
    meta = pd.DataFrame({"grp": rng.integers(0, 12, n).astype(str), "batch": rng.integers(0, 3, n).astype(str)})
    # positives: same group, other batch; negatives: other group (rows in both lists occur when ... never here),
    # plus a second rule whose negatives include the positives (neg_diffby=[] with neg_sameby=[batch] overlaps)
    specs = {"a": dict(pos_sameby=["grp"], pos_diffby=["batch"], neg_sameby=[], neg_diffby=["grp"]),
             "b": dict(pos_sameby=["grp"], pos_diffby=[], neg_sameby=["batch"], neg_diffby=[])}
    q = np.arange(0, n, 2, dtype=np.int64)
    sim = np.round(rng.uniform(-1, 1, (len(q), n)) * (levels // 2)) / max(1, levels // 2)
    for name, spec in specs.items():
        rule = _build_rule(meta, name, spec)
        rule.m, rule.l = _counts(rule)
        want = rule.m[q] > 0
        ap, u, found = np.empty(len(q)), np.empty(len(q)), np.zeros(len(q), dtype=np.int64)
        cols = np.arange(n, dtype=np.int64)
        assert len(rule.groups[1]) > 0  # one pos_sameby column: positives found through the group index
        _rank_block(sim, q, want, rule.m[q], rule.l[q] - rule.m[q], cols, cols, rule.active, rule.ps, rule.pd_, rule.ns, rule.nd, False, False,
                    ap, u, found, *rule.groups)
        # the same without the index (a full scan for positives) gives the same bits
        ap2, u2, found2 = np.empty(len(q)), np.empty(len(q)), np.zeros(len(q), dtype=np.int64)
        none = np.zeros(0, dtype=np.int64)
        _rank_block(sim, q, want, rule.m[q], rule.l[q] - rule.m[q], cols, cols, rule.active, rule.ps, rule.pd_, rule.ns, rule.nd, False, False,
                    ap2, u2, found2, none, none)
        np.testing.assert_array_equal(ap2[want], ap[want])
        np.testing.assert_array_equal(u2[want], u[want])
        g, b = meta["grp"].to_numpy(), meta["batch"].to_numpy()
        for t, i in enumerate(q):
            if not want[t]:
                continue
            other = np.arange(n) != i
            if name == "a":
                pos, neg = other & (g == g[i]) & (b != b[i]), other & (g != g[i])
            else:
                pos, neg = other & (g == g[i]), other & (b == b[i])
            want_ap, want_u = brute_force(sim[t], pos, neg)
            assert found[t] == pos.sum()
            assert ap[t] == pytest.approx(want_ap, rel=1e-12), (name, t)
            assert u[t] == want_u, (name, t)
