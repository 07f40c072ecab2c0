//! Ranks of the positives among all candidates, per query unit.
//!
//! A *query unit* is a set of member rows (one row for copairs-style per-query metrics; all rows of
//! a compound for cytominer-eval's pooled `groupby_columns`) and, for multilabel positives, one
//! label. Its candidate list pools, over every member i, all rows j != i that are positives
//! (`pos.matches(i, j)`) or negatives (`neg.matches(i, j)`); a pair meeting both rules enters
//! twice, once as each, as copairs does. The list is ordered by decreasing similarity.
//!
//! **Tie rule** (one for every metric built on this module): a positive and a negative with equal
//! similarity rank the positive first. This is copairs' order (stable lexsort with positives first);
//! ties among positives or among negatives do not change any metric.
//!
//! **copairs' resolution** (`f32_keys`): copairs stores similarities as float32 and sorts by the
//! float32 key `1 - s`, so similarities that differ by less than float32 resolution tie (and the
//! positive wins). With `f32_keys` the ranking uses that same key, which reproduces copairs' AP
//! exactly on data whose similarities crowd near 1 (e.g. raw CellProfiler features under cosine).
//! Without it, ranking uses the full precision of the input type.
//!
//! Ranks are 0-based positions of each positive in that list, ascending. They are computed without
//! sorting the candidates: positives are sorted (M log M), then each negative is placed among them
//! by binary search (L log M), so a query costs O(L log M) after its similarity row.
use std::collections::HashMap;

use ndarray::{Array2, Axis};
use rayon::prelude::*;

use crate::error::{EvalError, Result};
use crate::pairs::PairRule;
use crate::similarity::{Metric, Prepared, Real};

/// Query units in CSR form.
#[derive(Clone, Debug)]
pub struct Units {
    offsets: Vec<usize>,
    rows: Vec<usize>,
    labels: Option<Vec<i64>>,
}

impl Units {
    pub fn new(offsets: Vec<usize>, rows: Vec<usize>, labels: Option<Vec<i64>>, n: usize) -> Result<Units> {
        if offsets.is_empty() || offsets[0] != 0 || *offsets.last().unwrap() != rows.len() || offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(EvalError::Invalid("query-unit offsets do not describe the member list".into()));
        }
        if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
            return Err(EvalError::Invalid(format!("query-unit member row {bad} is out of range (N = {n})")));
        }
        if let Some(l) = &labels {
            if l.len() != offsets.len() - 1 {
                return Err(EvalError::Length { what: "query-unit labels".into(), expected: offsets.len() - 1, got: l.len() });
            }
        }
        Ok(Units { offsets, rows, labels })
    }
    /// One unit per row: copairs' per-query lists.
    pub fn per_row(n: usize) -> Units {
        Units { offsets: (0..=n).collect(), rows: (0..n).collect(), labels: None }
    }
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn members(&self, u: usize) -> &[usize] {
        &self.rows[self.offsets[u]..self.offsets[u + 1]]
    }
    pub fn label(&self, u: usize) -> Option<i64> {
        self.labels.as_ref().map(|l| l[u])
    }
}

/// What one unit's ranking gives a metric.
pub struct UnitRanks<'a> {
    /// 0-based ranks of the positives, ascending.
    pub ranks: &'a [u64],
    /// Number of candidates (positives + negatives).
    pub n_total: u64,
}

impl UnitRanks<'_> {
    pub fn n_pos(&self) -> u64 {
        self.ranks.len() as u64
    }
}

#[derive(Default)]
struct Scratch {
    pos: Vec<f64>,
    neg: Vec<f64>,
    cnt: Vec<u64>,
    ranks: Vec<u64>,
}

fn rank_one<T: Real>(
    block: &Array2<T>,
    slot: &HashMap<usize, usize>,
    members: &[usize],
    label: Option<i64>,
    pos: &PairRule,
    neg: &PairRule,
    f32_keys: bool,
    euclidean: bool,
    sc: &mut Scratch,
) -> u64 {
    sc.pos.clear();
    sc.neg.clear();
    let n = block.ncols();
    for &i in members {
        let row = block.index_axis(Axis(0), slot[&i]);
        let row = row.as_slice().expect("blocks are row-major");
        for j in 0..n {
            if j == i {
                continue;
            }
            let is_pos = match label {
                Some(l) => pos.matches_label(i, j, l),
                None => pos.matches(i, j),
            };
            let is_neg = neg.matches(i, j);
            if is_pos || is_neg {
                let s = row[j].to_f64().unwrap();
                // copairs' sort key is the float32 value of 1 - float32(s); negate to keep "larger first"
                // (for Euclidean copairs' similarity is 1 / (1 + d), d = -s here)
                let s = match (f32_keys, euclidean) {
                    (false, _) => s,
                    (true, false) => -((1.0f32 - s as f32) as f64),
                    (true, true) => -((1.0f32 - (1.0 / (1.0 - s)) as f32) as f64),
                };
                if is_pos {
                    sc.pos.push(s);
                }
                if is_neg {
                    sc.neg.push(s);
                }
            }
        }
    }
    // positives by decreasing similarity
    sc.pos.sort_unstable_by(|a, b| b.partial_cmp(a).unwrap());
    let m = sc.pos.len();
    sc.cnt.clear();
    sc.cnt.resize(m + 1, 0);
    for &v in &sc.neg {
        // positives with s >= v stay above this negative (ties: positive first)
        let k = sc.pos.partition_point(|&s| s >= v);
        sc.cnt[k] += 1;
    }
    sc.ranks.clear();
    let mut above = 0u64;
    for k in 0..m {
        above += sc.cnt[k];
        sc.ranks.push(k as u64 + above);
    }
    (m + sc.neg.len()) as u64
}

/// Rank every unit and hand its ranks to `f`; returns f's results in unit order.
///
/// Units are processed in batches whose distinct member rows number about `block_rows`; one
/// `rows x N` similarity block exists per batch. Units within a batch run on the rayon pool.
pub fn rank_units<T, R, F>(
    p: &Prepared<T>,
    units: &Units,
    pos: &PairRule,
    neg: &PairRule,
    block_rows: usize,
    f32_keys: bool,
    f: F,
) -> Vec<R>
where
    T: Real,
    R: Send,
    F: Fn(usize, UnitRanks<'_>) -> R + Sync,
{
    let block_rows = block_rows.max(1);
    let euclidean = p.metric() == Metric::Euclidean;
    let mut out: Vec<R> = Vec::with_capacity(units.len());
    let mut start = 0;
    while start < units.len() {
        // grow the batch until it holds about block_rows distinct rows
        let mut slot: HashMap<usize, usize> = HashMap::new();
        let mut rows: Vec<usize> = Vec::new();
        let mut end = start;
        while end < units.len() && (rows.len() < block_rows || end == start) {
            for &r in units.members(end) {
                slot.entry(r).or_insert_with(|| {
                    rows.push(r);
                    rows.len() - 1
                });
            }
            end += 1;
        }
        let block = p.block(&rows);
        let part: Vec<R> = (start..end)
            .into_par_iter()
            .map_init(Scratch::default, |sc, u| {
                let n_total = rank_one(&block, &slot, units.members(u), units.label(u), pos, neg, f32_keys, euclidean, sc);
                f(u, UnitRanks { ranks: &sc.ranks, n_total })
            })
            .collect();
        out.extend(part);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    /// Brute force: sort the pooled candidate list with positives first on ties.
    fn brute(sims: &Array2<f64>, members: &[usize], pos: &dyn Fn(usize, usize) -> bool, neg: &dyn Fn(usize, usize) -> bool) -> Vec<u64> {
        let mut list: Vec<(f64, bool)> = vec![];
        for &i in members {
            for j in 0..sims.ncols() {
                if i == j {
                    continue;
                }
                if pos(i, j) {
                    list.push((sims[[i, j]], true));
                }
                if neg(i, j) {
                    list.push((sims[[i, j]], false));
                }
            }
        }
        list.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(b.1.cmp(&a.1)));
        list.iter().enumerate().filter(|(_, x)| x.1).map(|(k, _)| k as u64).collect()
    }

    #[test]
    fn ranks_match_brute_force_with_ties() {
        // rows 0..8, compounds [0,0,0,1,1,2,2,3]; x chosen to create exact ties
        let x = array![
            [1.0, 0.0],
            [1.0, 0.0],
            [0.0, 1.0],
            [1.0, 0.0],
            [0.0, 1.0],
            [1.0, 1.0],
            [1.0, 0.0],
            [-1.0, 0.0]
        ];
        let cpd = vec![0i64, 0, 0, 1, 1, 2, 2, 3];
        let p = Prepared::new(x.view(), Metric::Cosine).unwrap();
        let sims = p.block(&(0..8).collect::<Vec<_>>());
        let pos = PairRule::new(8, vec![cpd.clone()], vec![], None).unwrap();
        let neg = PairRule::new(8, vec![], vec![cpd.clone()], None).unwrap();
        let got = rank_units(&p, &Units::per_row(8), &pos, &neg, 3, false, |_, r| (r.ranks.to_vec(), r.n_total));
        for i in 0..8 {
            let want = brute(&sims, &[i], &|a, b| cpd[a] == cpd[b], &|a, b| cpd[a] != cpd[b]);
            assert_eq!(got[i].0, want, "row {i}");
            assert_eq!(got[i].1, 7);
        }
        // pooled per compound
        let units = Units::new(vec![0, 3, 5, 7, 8], vec![0, 1, 2, 3, 4, 5, 6, 7], None, 8).unwrap();
        let got = rank_units(&p, &units, &pos, &neg, 2, false, |_, r| r.ranks.to_vec());
        let groups: [&[usize]; 4] = [&[0, 1, 2], &[3, 4], &[5, 6], &[7]];
        for (u, g) in groups.iter().enumerate() {
            assert_eq!(got[u], brute(&sims, g, &|a, b| cpd[a] == cpd[b], &|a, b| cpd[a] != cpd[b]));
        }
    }

    #[test]
    fn f32_keys_tie_within_float32_resolution() {
        // query 0: positive row 1 slightly less similar than negative row 2, by less than f32 resolution
        let x = array![[1.0, 0.0], [1.0, 1.0e-4], [1.0, 0.9e-4]];
        let p = Prepared::new(x.view(), Metric::Cosine).unwrap();
        let cpd = vec![0i64, 0, 1];
        let pos = PairRule::new(3, vec![cpd.clone()], vec![], None).unwrap();
        let neg = PairRule::new(3, vec![], vec![cpd], None).unwrap();
        let exact = rank_units(&p, &Units::per_row(3), &pos, &neg, 3, false, |_, r| r.ranks.to_vec());
        let f32k = rank_units(&p, &Units::per_row(3), &pos, &neg, 3, true, |_, r| r.ranks.to_vec());
        assert_eq!(exact[0], vec![1]);
        assert_eq!(f32k[0], vec![0]);
    }
}
