//! Which pairs of profiles are positives and which are negatives.
//!
//! A [`PairRule`] is copairs' `sameby` / `diffby` pair: rows i != j form a pair when they are equal
//! in every `same` column and different in every `diff` column. Columns arrive as integer codes
//! (the Python side factorises metadata; missing values are refused there). A multilabel column
//! (lists of labels per row) can sit in `same` (the rows share at least one label) or in `diff`
//! (they share none); for positives the ranking code can further restrict to one label.
use crate::error::{EvalError, Result};

/// Per-row label lists in CSR form; each row's labels sorted and unique.
#[derive(Clone, Debug, Default)]
pub struct Labels {
    offsets: Vec<usize>,
    items: Vec<i64>,
}

impl Labels {
    pub fn new(offsets: Vec<usize>, items: Vec<i64>) -> Result<Labels> {
        if offsets.is_empty() || *offsets.last().unwrap() != items.len() || offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(EvalError::Invalid("multilabel offsets do not describe the label list".into()));
        }
        let mut items = items;
        let mut out_off = vec![0usize];
        let mut out = Vec::with_capacity(items.len());
        for w in offsets.windows(2) {
            let row = &mut items[w[0]..w[1]];
            row.sort_unstable();
            let mut last = None;
            for &v in row.iter() {
                if last != Some(v) {
                    out.push(v);
                    last = Some(v);
                }
            }
            out_off.push(out.len());
        }
        Ok(Labels { offsets: out_off, items: out })
    }
    pub fn n(&self) -> usize {
        self.offsets.len() - 1
    }
    pub fn of(&self, i: usize) -> &[i64] {
        &self.items[self.offsets[i]..self.offsets[i + 1]]
    }
    pub fn has(&self, i: usize, label: i64) -> bool {
        self.of(i).binary_search(&label).is_ok()
    }
    pub fn share_any(&self, i: usize, j: usize) -> bool {
        let (a, b) = (self.of(i), self.of(j));
        let (mut p, mut q) = (0, 0);
        while p < a.len() && q < b.len() {
            match a[p].cmp(&b[q]) {
                std::cmp::Ordering::Equal => return true,
                std::cmp::Ordering::Less => p += 1,
                std::cmp::Ordering::Greater => q += 1,
            }
        }
        false
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MultiMode {
    /// The rows share at least one label.
    Same,
    /// The rows share no label.
    Diff,
}

/// copairs' pair definition over integer-coded metadata columns.
#[derive(Clone, Debug, Default)]
pub struct PairRule {
    same: Vec<Vec<i64>>,
    diff: Vec<Vec<i64>>,
    multi: Option<(Labels, MultiMode)>,
}

impl PairRule {
    pub fn new(n: usize, same: Vec<Vec<i64>>, diff: Vec<Vec<i64>>, multi: Option<(Labels, MultiMode)>) -> Result<PairRule> {
        for (k, c) in same.iter().chain(diff.iter()).enumerate() {
            if c.len() != n {
                return Err(EvalError::Length { what: format!("metadata code column {k}"), expected: n, got: c.len() });
            }
        }
        if let Some((l, _)) = &multi {
            if l.n() != n {
                return Err(EvalError::Length { what: "multilabel column".into(), expected: n, got: l.n() });
            }
        }
        if same.is_empty() && diff.is_empty() && multi.is_none() {
            return Err(EvalError::Invalid("a pair rule needs at least one sameby or diffby column".into()));
        }
        Ok(PairRule { same, diff, multi })
    }

    /// Does (i, j) satisfy the rule? Never true for i == j.
    #[inline]
    pub fn matches(&self, i: usize, j: usize) -> bool {
        i != j
            && self.same.iter().all(|c| c[i] == c[j])
            && self.diff.iter().all(|c| c[i] != c[j])
            && match &self.multi {
                None => true,
                Some((l, MultiMode::Same)) => l.share_any(i, j),
                Some((l, MultiMode::Diff)) => !l.share_any(i, j),
            }
    }

    /// Like [`matches`](Self::matches), but the multilabel condition is "j carries `label`"
    /// (i is assumed to carry it): copairs' per-label positives.
    #[inline]
    pub fn matches_label(&self, i: usize, j: usize, label: i64) -> bool {
        i != j
            && self.same.iter().all(|c| c[i] == c[j])
            && self.diff.iter().all(|c| c[i] != c[j])
            && match &self.multi {
                None => true,
                Some((l, _)) => l.has(j, label),
            }
    }

    pub fn labels(&self) -> Option<&Labels> {
        self.multi.as_ref().map(|(l, _)| l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_and_diff() {
        // compound, plate
        let r = PairRule::new(4, vec![vec![0, 0, 1, 1]], vec![vec![0, 1, 0, 0]], None).unwrap();
        assert!(r.matches(0, 1));
        assert!(!r.matches(2, 3)); // same plate
        assert!(!r.matches(0, 2)); // different compound
        assert!(!r.matches(1, 1));
    }

    #[test]
    fn multilabel() {
        let l = Labels::new(vec![0, 2, 3, 4], vec![5, 3, 3, 9]).unwrap();
        assert_eq!(l.of(0), &[3, 5]);
        let same = PairRule::new(3, vec![], vec![], Some((l.clone(), MultiMode::Same))).unwrap();
        let diff = PairRule::new(3, vec![], vec![], Some((l, MultiMode::Diff))).unwrap();
        assert!(same.matches(0, 1) && !same.matches(0, 2));
        assert!(!diff.matches(0, 1) && diff.matches(0, 2));
        assert!(same.matches_label(0, 1, 3) && !same.matches_label(0, 1, 5));
    }

    #[test]
    fn lengths_checked() {
        assert!(PairRule::new(3, vec![vec![0, 1]], vec![], None).is_err());
        assert!(PairRule::new(3, vec![], vec![], None).is_err());
        assert!(Labels::new(vec![0, 5], vec![1]).is_err());
    }
}
