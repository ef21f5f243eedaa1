//! Aggregation operators.

use std::sync::Arc;

use hashbrown::HashMap;
use promql_parser::parser::{AggregateExpr, Expr, LabelModifier};
use vigil_model::{Labels, METRIC_NAME};

use crate::eval::{Evaluator, PROJECTABLE, Sample, Value, unwrap_parens};
use crate::functions::{kahan_avg, kahan_inc, quantile};
use crate::{Error, Result, format_value};

/// The labels a sample contributes to its group under `by`/`without`.
pub(crate) fn group_labels(m: &Labels, modifier: &Option<LabelModifier>) -> Labels {
    match modifier {
        None => Labels::new(),
        Some(LabelModifier::Include(ls)) => Labels::from_sorted(
            m.iter()
                .filter(|l| ls.labels.iter().any(|n| n == &l.name))
                .cloned()
                .collect(),
        ),
        Some(LabelModifier::Exclude(ls)) => Labels::from_sorted(
            m.iter()
                .filter(|l| l.name != METRIC_NAME && !ls.labels.iter().any(|n| n == &l.name))
                .cloned()
                .collect(),
        ),
    }
}

/// The labels of `m` that `by`/`without` keep, in order, without allocating.
fn kept<'a>(
    m: &'a Labels,
    modifier: &'a Option<LabelModifier>,
) -> impl Iterator<Item = &'a vigil_model::Label> {
    m.iter().filter(move |l| match modifier {
        None => false,
        Some(LabelModifier::Include(ls)) => ls.labels.iter().any(|n| n == &l.name),
        Some(LabelModifier::Exclude(ls)) => {
            l.name != METRIC_NAME && !ls.labels.iter().any(|n| n == &l.name)
        }
    })
}

fn group_hash(m: &Labels, modifier: &Option<LabelModifier>) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = foldhash::fast::FixedState::with_seed(0x5eed).build_hasher();
    for l in kept(m, modifier) {
        h.write(l.name.as_bytes());
        h.write_u8(0xff);
        h.write(l.value.as_bytes());
        h.write_u8(0xfe);
    }
    h.finish()
}

struct Group {
    labels: Labels,
    members: Vec<Sample>,
    /// Whether any member's name is to be dropped (matters with `by (__name__)`).
    drop_name: bool,
}

impl Evaluator<'_> {
    pub(crate) fn eval_aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Value> {
        let op = a.op.to_string().to_lowercase();
        let param = match &a.param {
            Some(p) => Some(self.eval(p, t)?),
            None => None,
        };
        let scalar_param = || -> Result<f64> {
            match &param {
                Some(Value::Scalar(v)) => Ok(*v),
                _ => Err(Error::BadData(format!("{op}: expected a scalar parameter"))),
            }
        };
        let k = match op.as_str() {
            "topk" | "bottomk" | "limitk" => {
                let k = scalar_param()?;
                if k.is_nan() {
                    return Err(Error::Execution("Parameter value is NaN".into()));
                }
                if k >= 9.223_372_036_854_776e18 || k <= -9.223_372_036_854_776e18 {
                    return Err(Error::Execution(format!(
                        "Scalar value {k} overflows int64"
                    )));
                }
                k as i64
            }
            _ => 0,
        };
        if op == "quantile"
            && let (Some(Value::Scalar(q)), Some(p)) = (&param, &a.param)
        {
            self.annotations.check_quantile(*q, p);
        }
        let input = match self.pushed_down(a, &op, param.as_ref(), t)? {
            Pushdown::Groups(keep_name, groups) => {
                let q = if op == "quantile" {
                    scalar_param()?
                } else {
                    0.0
                };
                return Ok(Value::Vector(reduce_groups(
                    &op,
                    q,
                    keep_name,
                    groups,
                    &a.modifier,
                    t,
                )));
            }
            Pushdown::Done(v) => return Ok(Value::Vector(v)),
            Pushdown::Evaluated(v) => v,
            Pushdown::No => self.eval(&a.expr, t)?,
        };
        let input = match input {
            Value::Vector(v) => v,
            _ => {
                return Err(Error::BadData(
                    "aggregation expects an instant vector".into(),
                ));
            }
        };
        let count_label = if op == "count_values" {
            match &param {
                Some(Value::String(s)) => {
                    if s.is_empty() || s.chars().any(char::is_control) {
                        return Err(Error::Execution(format!("invalid label name {s:?}")));
                    }
                    Some(s.clone())
                }
                _ => {
                    return Err(Error::BadData(
                        "count_values expects a string parameter".into(),
                    ));
                }
            }
        } else {
            None
        };

        // Group in order of first appearance. The key is a hash of the kept labels, checked
        // against the group's labels, so no label set is built for a sample of a known group.
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut value_buf = String::new();
        for s in input {
            let mut h = group_hash(&s.metric, &a.modifier);
            if count_label.is_some() {
                value_buf = format_value(s.v);
                h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ foldhash_str(&value_buf);
            }
            let found = index.get(&h).and_then(|cands| {
                cands.iter().copied().find(|&gi| {
                    let g = &groups[gi].labels;
                    match &count_label {
                        None => kept(&s.metric, &a.modifier).eq(g.iter()),
                        Some(l) => {
                            let mut k = group_labels(&s.metric, &a.modifier);
                            k.set(l, &value_buf);
                            k == *g
                        }
                    }
                })
            });
            let i = match found {
                Some(i) => i,
                None => {
                    let mut key = group_labels(&s.metric, &a.modifier);
                    if let Some(l) = &count_label {
                        key.set(l, &value_buf);
                    }
                    index.entry(h).or_default().push(groups.len());
                    groups.push(Group {
                        labels: key,
                        members: Vec::new(),
                        drop_name: false,
                    });
                    groups.len() - 1
                }
            };
            groups[i].drop_name |= s.drop_name;
            groups[i].members.push(s);
        }

        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            let drop_name = g.drop_name;
            let emit = |out: &mut Vec<Sample>, labels: Labels, v: f64| {
                out.push(Sample {
                    metric: Arc::new(labels),
                    t,
                    v,
                    drop_name,
                })
            };
            match op.as_str() {
                "count_values" => emit(&mut out, g.labels, g.members.len() as f64),
                p if PROJECTABLE.contains(&p) => {
                    let q = if op == "quantile" {
                        scalar_param()?
                    } else {
                        0.0
                    };
                    let mut vals: Vec<f64> = g.members.iter().map(|s| s.v).collect();
                    emit(&mut out, g.labels, reduce(p, q, &mut vals));
                }
                "topk" | "bottomk" | "limitk" => {
                    if k < 1 {
                        continue;
                    }
                    let mut m = g.members;
                    if op != "limitk" {
                        m = select_k(m, k as usize, op == "topk");
                    }
                    m.truncate(k.min(m.len() as i64) as usize);
                    for mut s in m {
                        s.t = t;
                        out.push(s);
                    }
                }
                other => {
                    return Err(Error::BadData(format!(
                        "aggregation \"{other}\" is not supported"
                    )));
                }
            }
        }
        Ok(Value::Vector(out))
    }
}

/// An aggregation's input read grouped (see `Evaluator::pushed_down`).
enum Pushdown {
    /// Not applicable: evaluate the argument.
    No,
    /// The argument was evaluated the usual way after all.
    Evaluated(Value),
    /// Values by group of the `by` labels (more may be kept), and whether the function
    /// keeps the metric name.
    Groups(bool, crate::Grouped),
    /// The aggregation's result at this step, reduced straight from its input's step table.
    Done(Vec<Sample>),
}

/// In a range query, an aggregation's input step table with its rows grouped (once per
/// query): each group's labels and rows, and whether the input drops the metric name.
pub(crate) struct TableGroups {
    table: Arc<crate::eval::StepTable>,
    groups: Vec<(Arc<Labels>, Vec<usize>)>,
    drop_name: bool,
}

/// A projectable aggregation (`PROJECTABLE`) of one group's values (in input order;
/// `q`: quantile's parameter). `vals` is not empty.
fn reduce(op: &str, q: f64, vals: &mut [f64]) -> f64 {
    match op {
        "sum" => {
            let (mut s, mut c) = (0.0, 0.0);
            for &v in vals.iter() {
                (s, c) = kahan_inc(v, s, c);
            }
            s + c
        }
        "avg" => kahan_avg(vals.iter().copied()),
        "count" => vals.len() as f64,
        "group" => 1.0,
        "min" | "max" => {
            let mut m = vals[0];
            for &v in &vals[1..] {
                let better = if op == "max" { m < v } else { m > v };
                if better || m.is_nan() {
                    m = v;
                }
            }
            m
        }
        "stddev" | "stdvar" => {
            let (mut n, mut mean, mut cmean, mut aux, mut caux) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for &v in vals.iter() {
                n += 1.0;
                let delta = v - (mean + cmean);
                (mean, cmean) = kahan_inc(delta / n, mean, cmean);
                (aux, caux) = kahan_inc(delta * (v - (mean + cmean)), aux, caux);
            }
            let var = (aux + caux) / n;
            if op == "stddev" { var.sqrt() } else { var }
        }
        _ => quantile(q, vals),
    }
}

/// The aggregation of values read grouped: the read's groups (which may keep more labels
/// than `by`) merged by the aggregation's labels, in order of first appearance.
fn reduce_groups(
    op: &str,
    q: f64,
    keep_name: bool,
    groups: crate::Grouped,
    modifier: &Option<LabelModifier>,
    t: i64,
) -> Vec<Sample> {
    let mut merged = crate::GroupMerge::default();
    for (l, vals) in groups {
        merged.add(group_labels(&l, modifier), vals);
    }
    merged
        .groups
        .into_iter()
        .map(|(labels, mut vals)| Sample {
            metric: Arc::new(labels),
            t,
            v: reduce(op, q, &mut vals),
            drop_name: !keep_name,
        })
        .collect()
}

impl Evaluator<'_> {
    /// `sum by (zone) (rate(x[5m]))` at one instant, `x` streamed with only `zone` read:
    /// the store hands each group's values (`Storage::select_map_grouped`), so no series'
    /// labels or samples are built. Only for projectable aggregations of a one-argument range
    /// function of a projected selector; otherwise `No` (or `Evaluated` when the function
    /// was evaluated but read the usual way, e.g. from rollups).
    fn pushed_down(
        &self,
        a: &AggregateExpr,
        op: &str,
        param: Option<&Value>,
        t: i64,
    ) -> Result<Pushdown> {
        let Some(LabelModifier::Include(_)) = &a.modifier else {
            return Ok(Pushdown::No);
        };
        if self.start != self.end && self.step > 0 && PROJECTABLE.contains(&op) {
            return self.over_table(a, op, param, t);
        }
        let (Expr::Call(c), true) = (
            unwrap_parens(&a.expr),
            PROJECTABLE.contains(&op) && self.start == self.end,
        ) else {
            return Ok(Pushdown::No);
        };
        let [arg] = c.args.args.as_slice() else {
            return Ok(Pushdown::No);
        };
        let Expr::MatrixSelector(m) = unwrap_parens(arg) else {
            return Ok(Pushdown::No);
        };
        if !self.projected(&m.vs) {
            return Ok(Pushdown::No);
        }
        self.group_request.set(crate::annotations::node(&m.vs));
        let v = self.eval(&a.expr, t);
        self.group_request.set(0);
        let grouped = self.grouped.borrow_mut().take();
        let v = v?;
        Ok(match grouped {
            Some((keep_name, groups)) => Pushdown::Groups(keep_name, groups),
            None => Pushdown::Evaluated(v),
        })
    }
}

impl Evaluator<'_> {
    /// `sum by (zone) (rate(x[5m]))` in a range query, `x` streamed into a step table: the
    /// table's rows are grouped once (on the first step) and every step reduces each group's
    /// values for that step straight from the table, in row order (the order the step's
    /// vector would have), so no samples are built and no labels hashed per step.
    /// `param` is the aggregation's parameter, already evaluated at `t`.
    fn over_table(
        &self,
        a: &AggregateExpr,
        op: &str,
        param: Option<&Value>,
        t: i64,
    ) -> Result<Pushdown> {
        let key = a as *const AggregateExpr as usize;
        let cached = self.table_groups.borrow().get(&key).cloned();
        let tg = match cached {
            Some(Some(tg)) => tg,
            Some(None) => return Ok(Pushdown::No),
            None => {
                let vs = match unwrap_parens(&a.expr) {
                    Expr::VectorSelector(vs) => Some(vs),
                    Expr::Call(c) => match c.args.args.as_slice() {
                        [arg] => match unwrap_parens(arg) {
                            Expr::MatrixSelector(m) => Some(&m.vs),
                            _ => None,
                        },
                        _ => None,
                    },
                    _ => None,
                };
                let Some(vs) = vs.filter(|vs| self.is_deferred(vs)) else {
                    self.table_groups.borrow_mut().insert(key, None);
                    return Ok(Pushdown::No);
                };
                // The first step makes the table; its samples tell about the metric name.
                let v = self.eval(&a.expr, t)?;
                let table = self
                    .step_values
                    .borrow()
                    .get(&(vs as *const _ as usize))
                    .cloned();
                let drop_name = match (&v, unwrap_parens(&a.expr)) {
                    (_, Expr::VectorSelector(_)) => Some(false),
                    (Value::Vector(v), _) => v.first().map(|s| s.drop_name),
                    _ => None,
                };
                let (Some(table), Some(drop_name)) = (table, drop_name) else {
                    self.table_groups.borrow_mut().insert(key, None);
                    return Ok(Pushdown::Evaluated(v));
                };
                let mut index: HashMap<Labels, usize> = HashMap::new();
                let mut groups: Vec<(Arc<Labels>, Vec<usize>)> = Vec::new();
                for (row, (metric, _)) in table.iter().enumerate() {
                    let g = group_labels(metric, &a.modifier);
                    let i = *index.entry(g).or_insert_with_key(|g| {
                        groups.push((Arc::new(g.clone()), Vec::new()));
                        groups.len() - 1
                    });
                    groups[i].1.push(row);
                }
                let tg = std::rc::Rc::new(TableGroups {
                    table,
                    groups,
                    drop_name,
                });
                self.table_groups.borrow_mut().insert(key, Some(tg.clone()));
                tg
            }
        };
        let q = match (op, param) {
            ("quantile", Some(Value::Scalar(q))) => *q,
            ("quantile", _) => {
                return Err(Error::BadData(
                    "quantile: expected a scalar parameter".into(),
                ));
            }
            _ => 0.0,
        };
        let k = ((t - self.start) / self.step) as usize;
        let mut out = Vec::with_capacity(tg.groups.len());
        let mut vals = Vec::new();
        for (labels, rows) in &tg.groups {
            vals.clear();
            vals.extend(
                rows.iter()
                    .filter_map(|&r| tg.table[r].1.get(k).copied().flatten()),
            );
            if !vals.is_empty() {
                out.push(Sample {
                    metric: labels.clone(),
                    t,
                    v: reduce(op, q, &mut vals),
                    drop_name: tg.drop_name,
                });
            }
        }
        Ok(Pushdown::Done(out))
    }
}

/// Prometheus' topk/bottomk selection, reproduced exactly (ties included): a binary heap of
/// at most `k` samples with the weakest at the root, filled in input order; a later sample
/// replaces the root only when strictly better. The result is sorted best first.
fn select_k(input: Vec<Sample>, k: usize, top: bool) -> Vec<Sample> {
    // `less(a, b)`: a is weaker than b (NaN is the weakest of all).
    let less = |a: f64, b: f64| -> bool {
        if a.is_nan() {
            return true;
        }
        if top { a < b } else { a > b }
    };
    let mut h: Vec<Sample> = Vec::with_capacity(k.min(input.len()));
    let up = |h: &mut Vec<Sample>, mut j: usize| {
        while j > 0 {
            let i = (j - 1) / 2;
            if !less(h[j].v, h[i].v) {
                break;
            }
            h.swap(i, j);
            j = i;
        }
    };
    let down = |h: &mut Vec<Sample>, i0: usize| -> bool {
        let n = h.len();
        let mut i = i0;
        loop {
            let j1 = 2 * i + 1;
            if j1 >= n {
                break;
            }
            let mut j = j1;
            if j1 + 1 < n && less(h[j1 + 1].v, h[j1].v) {
                j = j1 + 1;
            }
            if !less(h[j].v, h[i].v) {
                break;
            }
            h.swap(i, j);
            i = j;
        }
        i > i0
    };
    for s in input {
        if h.len() < k {
            h.push(s);
            let j = h.len() - 1;
            up(&mut h, j);
        } else if k > 0 {
            let root = h[0].v;
            let better = if top { root < s.v } else { root > s.v };
            if better || (root.is_nan() && !s.v.is_nan()) {
                h[0] = s;
                if k > 1 && !down(&mut h, 0) {
                    up(&mut h, 0);
                }
            }
        }
    }
    h.sort_by(|a, b| {
        use std::cmp::Ordering::*;
        match (a.v.is_nan(), b.v.is_nan()) {
            (true, true) => Equal,
            (true, false) => Greater,
            (false, true) => Less,
            _ if top => b.v.partial_cmp(&a.v).unwrap_or(Equal),
            _ => a.v.partial_cmp(&b.v).unwrap_or(Equal),
        }
    });
    h
}

fn foldhash_str(s: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x5eed).hash_one(s)
}
