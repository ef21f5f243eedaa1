//! Inverted postings per environment: for every (label name, label value) the sorted list of
//! series refs that carry it, and the evaluation of matchers over those lists.
//!
//! The same structure indexes the head (keys are ids in the head's symbol table) and each
//! block (keys are ids in the block's own symbol table); [`EnvPostings::select`] takes the two
//! small functions that translate between strings and ids.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use vigil_model::{MatchOp, Matcher};

/// Postings of one environment.
#[derive(Debug, Default)]
pub(crate) struct EnvPostings {
    /// (name id, value id) → sorted refs.
    pub(crate) by_label: BTreeMap<(u32, u32), Vec<u32>>,
    /// Every ref in the environment, sorted.
    pub(crate) all: Vec<u32>,
    /// Per label name id, its value ids in the order of their text: made when a regex with a
    /// required prefix first asks about the name, so that it looks only at the values with
    /// that prefix (found by binary search) instead of every value's text. `None` for a name
    /// with more than [`TEXT_ORDER_MAX`] values: sorting those under the index's read lock
    /// would hold up new series too long, so its values are scanned.
    text_order: Mutex<HashMap<u32, Option<TextOrder>>>,
}

/// Value ids of one label name sorted by their text, and those added since.
#[derive(Debug, Default)]
struct TextOrder {
    sorted: Vec<u32>,
    added: Vec<u32>,
}

/// Names with more values than this get no text order.
const TEXT_ORDER_MAX: usize = 1 << 17;

/// New values are folded into a name's text order once there are more than this many…
const ADDED_FOLD_MIN: usize = 64;
/// …and more than one per this many sorted ones (a fold re-sorts the whole list).
const ADDED_FOLD_RATIO: usize = 16;

fn insert_sorted(v: &mut Vec<u32>, r: u32) {
    match v.last() {
        Some(&last) if last < r => v.push(r),
        None => v.push(r),
        _ => {
            if let Err(i) = v.binary_search(&r) {
                v.insert(i, r);
            }
        }
    }
}

/// Sorted intersection.
pub(crate) fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(small.len());
    if small.len() * 16 < large.len() {
        for &x in small {
            if large.binary_search(&x).is_ok() {
                out.push(x);
            }
        }
        return out;
    }
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Sorted difference `a \ b`.
pub(crate) fn subtract(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out = Vec::with_capacity(a.len());
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j >= b.len() || b[j] != x {
            out.push(x);
        }
    }
    out
}

/// The refs of sorted `r` that appear in any of `lists` (each sorted): one bitmap over the
/// refs up to `r`'s largest, so the cost is the lists' length plus `r`'s, with no sorting.
fn keep_listed(r: &[u32], lists: &[&[u32]]) -> Vec<u32> {
    let Some(&max) = r.last() else {
        return Vec::new();
    };
    let mut bits = vec![0u64; max as usize / 64 + 1];
    for l in lists {
        for &x in l.iter().take_while(|&&x| x <= max) {
            bits[x as usize / 64] |= 1 << (x % 64);
        }
    }
    r.iter()
        .copied()
        .filter(|&x| bits[x as usize / 64] >> (x % 64) & 1 == 1)
        .collect()
}

fn union(lists: Vec<&[u32]>) -> Vec<u32> {
    match lists.len() {
        0 => Vec::new(),
        1 => lists[0].to_vec(),
        _ => {
            let mut v: Vec<u32> = Vec::with_capacity(lists.iter().map(|l| l.len()).sum());
            for l in lists {
                v.extend_from_slice(l);
            }
            v.sort_unstable();
            v.dedup();
            v
        }
    }
}

impl EnvPostings {
    /// Adds a series.
    pub(crate) fn add(&mut self, sref: u32, labels: &[(u32, u32)]) {
        insert_sorted(&mut self.all, sref);
        let orders = self.text_order.get_mut();
        for &(n, v) in labels {
            match self.by_label.entry((n, v)) {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    insert_sorted(e.get_mut(), sref);
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(vec![sref]);
                    if let Some(Some(t)) = orders.get_mut(&n) {
                        t.added.push(v);
                    }
                }
            }
        }
    }

    /// Removes the given series (sorted refs) everywhere.
    pub(crate) fn remove_sorted(&mut self, refs: &[u32]) {
        if refs.is_empty() {
            return;
        }
        self.all = subtract(&self.all, refs);
        // Values may go with their last series; text orders are made again when asked for.
        self.text_order.get_mut().clear();
        self.by_label.retain(|_, v| {
            *v = subtract(v, refs);
            !v.is_empty()
        });
    }

    /// Values present for label name id `n`.
    pub(crate) fn values_of(&self, n: u32) -> impl Iterator<Item = (u32, &Vec<u32>)> {
        self.by_label
            .range((n, 0)..=(n, u32::MAX))
            .map(|(&(_, v), l)| (v, l))
    }

    /// Refs of series matching all `matchers`, sorted. `id_of` maps a string to this index's
    /// id (None when absent); `str_of` maps back.
    pub(crate) fn select<'s>(
        &self,
        matchers: &[Matcher],
        id_of: &dyn Fn(&str) -> Option<u32>,
        str_of: &dyn Fn(u32) -> &'s str,
    ) -> Vec<u32> {
        let mut minus: Vec<Vec<u32>> = Vec::new();
        // Each positive matcher's posting lists, resolved first so the smallest goes first.
        let mut positive: Vec<(usize, Vec<&[u32]>)> = Vec::new();
        for m in matchers {
            let name = id_of(&m.name);
            if m.matches_empty() {
                // Series lacking the label match; those with a non-matching value do not.
                let Some(n) = name else { continue };
                let bad: Vec<&[u32]> = self
                    .values_of(n)
                    .filter(|(v, _)| !m.matches(str_of(*v)))
                    .map(|(_, l)| l.as_slice())
                    .collect();
                if !bad.is_empty() {
                    minus.push(union(bad));
                }
                continue;
            }
            let Some(n) = name else { return Vec::new() };
            let lists: Vec<&[u32]> = if m.op == MatchOp::Eq {
                id_of(&m.value)
                    .and_then(|v| self.by_label.get(&(n, v)))
                    .map(|l| vec![l.as_slice()])
                    .unwrap_or_default()
            } else if let Some(alts) = m.literal_alternatives() {
                alts.iter()
                    .filter_map(|a| id_of(a).and_then(|v| self.by_label.get(&(n, v))))
                    .map(|l| l.as_slice())
                    .collect()
            } else if let Some(prefixed) = (m.op == MatchOp::Re && !m.required_prefix().is_empty())
                .then(|| self.with_prefix(n, m.required_prefix(), str_of))
                .flatten()
            {
                prefixed
                    .into_iter()
                    .filter(|&v| m.matches(str_of(v)))
                    .filter_map(|v| self.by_label.get(&(n, v)))
                    .map(|l| l.as_slice())
                    .collect()
            } else {
                self.values_of(n)
                    .filter(|(v, _)| m.matches(str_of(*v)))
                    .map(|(_, l)| l.as_slice())
                    .collect()
            };
            if lists.is_empty() {
                return Vec::new();
            }
            positive.push((lists.iter().map(|l| l.len()).sum(), lists));
        }
        positive.sort_by_key(|p| p.0);
        let mut result: Option<Vec<u32>> = None;
        for (_, lists) in positive {
            result = Some(match result {
                None => union(lists),
                // Narrow without copying the (possibly huge) other side.
                Some(r) if lists.len() == 1 => intersect(&r, lists[0]),
                Some(r) => keep_listed(&r, &lists),
            });
            if result.as_ref().is_some_and(|r| r.is_empty()) {
                return Vec::new();
            }
        }
        let mut r = result.unwrap_or_else(|| self.all.clone());
        for m in minus {
            r = subtract(&r, &m);
        }
        r
    }

    /// Value ids of label name `n` whose text starts with `prefix`, found in the name's text
    /// order (made on first use, new values folded in as they accumulate); `None` when the
    /// name has too many values to keep one (see [`TEXT_ORDER_MAX`]).
    fn with_prefix<'s>(
        &self,
        n: u32,
        prefix: &str,
        str_of: &dyn Fn(u32) -> &'s str,
    ) -> Option<Vec<u32>> {
        let by_text = |a: &u32, b: &u32| str_of(*a).cmp(str_of(*b));
        let mut orders = self.text_order.lock();
        let t = orders
            .entry(n)
            .or_insert_with(|| {
                let mut sorted: Vec<u32> = self.values_of(n).map(|(v, _)| v).collect();
                if sorted.len() > TEXT_ORDER_MAX {
                    return None;
                }
                sorted.sort_unstable_by(by_text);
                Some(TextOrder {
                    sorted,
                    added: Vec::new(),
                })
            })
            .as_mut()?;
        if t.added.len() > ADDED_FOLD_MIN && t.added.len() * ADDED_FOLD_RATIO > t.sorted.len() {
            // Two sorted runs: the stable sort merges them in one pass.
            t.added.sort_unstable_by(by_text);
            t.sorted.append(&mut t.added);
            t.sorted.sort_by(by_text);
        }
        let from = t.sorted.partition_point(|&v| str_of(v) < prefix);
        let len = t.sorted[from..].partition_point(|&v| str_of(v).starts_with(prefix));
        let added = t.added.iter().filter(|&&v| str_of(v).starts_with(prefix));
        Some(
            t.sorted[from..from + len]
                .iter()
                .chain(added)
                .copied()
                .collect(),
        )
    }

    /// Approximate heap bytes.
    pub(crate) fn heap_bytes(&self) -> usize {
        let orders: usize = self
            .text_order
            .lock()
            .values()
            .flatten()
            .map(|t| (t.sorted.capacity() + t.added.capacity()) * 4 + 64)
            .sum();
        orders
            + self.all.capacity() * 4
            + self
                .by_label
                .values()
                .map(|v| v.capacity() * 4 + 48)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Fx {
        p: EnvPostings,
        ids: HashMap<String, u32>,
        strs: Vec<String>,
    }

    impl Fx {
        fn id(&mut self, s: &str) -> u32 {
            if let Some(i) = self.ids.get(s) {
                return *i;
            }
            self.strs.push(s.to_string());
            let i = self.strs.len() as u32 - 1;
            self.ids.insert(s.to_string(), i);
            i
        }
        fn add(&mut self, r: u32, labels: &[(&str, &str)]) {
            let l: Vec<(u32, u32)> = labels
                .iter()
                .map(|(n, v)| (self.id(n), self.id(v)))
                .collect();
            self.p.add(r, &l);
        }
        fn sel(&self, m: &[Matcher]) -> Vec<u32> {
            self.p.select(m, &|s| self.ids.get(s).copied(), &|i| {
                self.strs[i as usize].as_str()
            })
        }
    }

    fn fx() -> Fx {
        let mut f = Fx {
            p: EnvPostings::default(),
            ids: HashMap::new(),
            strs: Vec::new(),
        };
        f.add(1, &[("__name__", "up"), ("job", "node"), ("zone", "a")]);
        f.add(2, &[("__name__", "up"), ("job", "api"), ("zone", "b")]);
        f.add(3, &[("__name__", "load"), ("job", "node")]);
        f
    }

    fn m(op: MatchOp, n: &str, v: &str) -> Matcher {
        Matcher::new(op, n, v).unwrap()
    }

    #[test]
    fn all_four_matchers() {
        let f = fx();
        assert_eq!(f.sel(&[m(MatchOp::Eq, "__name__", "up")]), vec![1, 2]);
        assert_eq!(
            f.sel(&[
                m(MatchOp::Eq, "__name__", "up"),
                m(MatchOp::Ne, "job", "node")
            ]),
            vec![2]
        );
        assert_eq!(f.sel(&[m(MatchOp::Re, "job", "no.*")]), vec![1, 3]);
        assert_eq!(f.sel(&[m(MatchOp::Re, "job", "no")]), Vec::<u32>::new());
        assert_eq!(f.sel(&[m(MatchOp::Nre, "zone", "a|b")]), vec![3]);
        assert_eq!(f.sel(&[m(MatchOp::Eq, "zone", "")]), vec![3]);
        assert_eq!(f.sel(&[m(MatchOp::Re, "zone", "a|b")]), vec![1, 2]);
        assert_eq!(f.sel(&[m(MatchOp::Eq, "missing", "x")]), Vec::<u32>::new());
        assert_eq!(f.sel(&[m(MatchOp::Ne, "missing", "x")]), vec![1, 2, 3]);
    }

    #[test]
    fn remove_drops_refs_and_empty_lists() {
        let mut f = fx();
        f.p.remove_sorted(&[1, 3]);
        assert_eq!(f.sel(&[m(MatchOp::Re, "job", ".+")]), vec![2]);
        assert_eq!(f.p.all, vec![2]);
    }

    #[test]
    fn new_values_wait_then_fold_into_the_text_order() {
        let mut f = Fx {
            p: EnvPostings::default(),
            ids: HashMap::new(),
            strs: Vec::new(),
        };
        let re = |p: &str| Matcher::new(MatchOp::Re, "n", p).unwrap();
        for r in 0..10 {
            f.add(r, &[("n", &format!("x{:03}", 100 - r))]);
        }
        assert_eq!(f.sel(&[re("x09.*")]), vec![1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let n = f.ids["n"];
        let sizes = |f: &Fx| {
            let o = f.p.text_order.lock();
            let t = o[&n].as_ref().unwrap();
            (t.sorted.len(), t.added.len())
        };
        assert_eq!(sizes(&f), (10, 0));
        for r in 10..50 {
            f.add(r, &[("n", &format!("x{:03}", 200 - r))]);
        }
        // Forty new values wait beside the ten sorted ones…
        assert_eq!(sizes(&f), (10, 40));
        assert_eq!(f.sel(&[re("x1[5-6].")]), (31..50).collect::<Vec<u32>>());
        for r in 50..80 {
            f.add(r, &[("n", &format!("x{:03}", 200 - r))]);
        }
        // …and past sixty-four they are folded in.
        assert_eq!(f.sel(&[re("x1[2-3].")]), (61..80).collect::<Vec<u32>>());
        assert_eq!(sizes(&f), (80, 0));
        f.p.remove_sorted(&[0]);
        assert!(f.p.text_order.lock().is_empty());
        // x100 went with series 0; x091…x099 do not start with x1.
        assert_eq!(f.sel(&[re("x1.*")]), (10..80).collect::<Vec<u32>>());
    }

    #[test]
    fn names_with_too_many_values_are_scanned_without_a_text_order() {
        let mut f = Fx {
            p: EnvPostings::default(),
            ids: HashMap::new(),
            strs: Vec::new(),
        };
        let many = TEXT_ORDER_MAX as u32 + 1;
        for r in 0..many {
            f.add(r, &[("n", &format!("v{r:07}"))]);
        }
        let m = Matcher::new(MatchOp::Re, "n", "v000001.").unwrap();
        assert_eq!(f.sel(&[m]), (10..20).collect::<Vec<u32>>());
        assert!(f.p.text_order.lock()[&f.ids["n"]].is_none());
    }

    #[test]
    fn set_ops() {
        assert_eq!(intersect(&[1, 3, 5, 7], &[3, 4, 5]), vec![3, 5]);
        assert_eq!(subtract(&[1, 3, 5, 7], &[3, 4, 5]), vec![1, 7]);
        let big: Vec<u32> = (0..1000).collect();
        assert_eq!(intersect(&[5, 999, 2000], &big), vec![5, 999]);
    }

    proptest::proptest! {
        /// Regexes with a required prefix (answered from the names' text order) select what
        /// matching every series' value does, while series come and go between selections
        /// (new values waiting to be folded in, folded in, orders dropped on removal).
        #[test]
        fn prefix_selection_agrees_with_brute_force(
            ops in proptest::collection::vec((0usize..5, 0usize..400, 0usize..6), 1..400),
        ) {
            let patterns = ["agent-0.*", "agent-01[0-5]", "agent-1.*|agent-2", "a.*", "agent-00?7", "b"];
            let value = |a: usize| match a {
                0..=299 => format!("agent-{a:03}"),
                300..=349 => format!("a{a}"),
                _ => format!("b{}", a % 3),
            };
            let mut f = Fx { p: EnvPostings::default(), ids: HashMap::new(), strs: Vec::new() };
            let mut live: std::collections::BTreeMap<u32, String> = Default::default();
            let mut next = 0u32;
            for (kind, a, b) in ops {
                match kind {
                    0 | 1 => {
                        let v = value(a);
                        f.add(next, &[("n", v.as_str())]);
                        live.insert(next, v);
                        next += 1;
                    }
                    2 | 3 => {
                        let m = Matcher::new(MatchOp::Re, "n", patterns[b]).unwrap();
                        let want: Vec<u32> = live
                            .iter()
                            .filter(|(_, v)| m.matches(v))
                            .map(|(r, _)| *r)
                            .collect();
                        proptest::prop_assert_eq!(f.sel(&[m]), want, "{}", patterns[b]);
                    }
                    _ => {
                        let r = a as u32 % next.max(1);
                        if live.remove(&r).is_some() {
                            f.p.remove_sorted(&[r]);
                        }
                    }
                }
            }
        }

        /// Selection agrees with matching every series' labels one by one, whatever the
        /// matchers' order, kinds and sizes (single lists, alternatives, regexes, negations).
        #[test]
        fn select_agrees_with_brute_force(
            series in proptest::collection::vec(
                proptest::collection::vec((0usize..3, 0usize..6), 0..4), 1..60),
            ms in proptest::collection::vec((0usize..4, 0usize..3, 0usize..6), 1..4),
        ) {
            let names = ["a", "b", "c"];
            let values = ["v0", "v1", "v2", "v3", "w0", "w1"];
            let mut f = Fx { p: EnvPostings::default(), ids: HashMap::new(), strs: Vec::new() };
            let mut all: Vec<Vec<(&str, &str)>> = Vec::new();
            for (r, ls) in series.iter().enumerate() {
                let mut l: Vec<(&str, &str)> = ls.iter().map(|&(n, v)| (names[n], values[v])).collect();
                l.sort();
                l.dedup_by_key(|x| x.0);
                f.add(r as u32, &l);
                all.push(l);
            }
            let matchers: Vec<Matcher> = ms
                .iter()
                .map(|&(op, n, v)| {
                    let (op, val) = match op {
                        0 => (MatchOp::Eq, values[v].to_string()),
                        1 => (MatchOp::Ne, values[v].to_string()),
                        2 => (MatchOp::Re, if v % 2 == 0 { format!("{}|v1", values[v]) } else { "v.*".into() }),
                        _ => (MatchOp::Nre, format!("{}.*", &values[v][..1])),
                    };
                    m(op, names[n], &val)
                })
                .collect();
            let want: Vec<u32> = all
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    matchers.iter().all(|mt| {
                        let v = l.iter().find(|x| x.0 == mt.name.as_str()).map_or("", |x| x.1);
                        mt.matches(v)
                    })
                })
                .map(|(r, _)| r as u32)
                .collect();
            proptest::prop_assert_eq!(f.sel(&matchers), want);
        }
    }
}
