//! Aggregation operators.

use std::sync::Arc;

use hashbrown::HashMap;
use promql_parser::parser::{AggregateExpr, LabelModifier};
use vigil_model::{Labels, METRIC_NAME};

use crate::eval::{Evaluator, Sample, Value};
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
        let input = match self.eval(&a.expr, t)? {
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
            let vals = || g.members.iter().map(|s| s.v);
            match op.as_str() {
                "sum" => {
                    let (mut s, mut c) = (0.0, 0.0);
                    for v in vals() {
                        (s, c) = kahan_inc(v, s, c);
                    }
                    emit(&mut out, g.labels, s + c);
                }
                "avg" => emit(&mut out, g.labels, kahan_avg(vals())),
                "count" | "count_values" => emit(&mut out, g.labels, g.members.len() as f64),
                "group" => emit(&mut out, g.labels, 1.0),
                "min" | "max" => {
                    let mut m = g.members[0].v;
                    for v in vals().skip(1) {
                        let better = if op == "max" { m < v } else { m > v };
                        if better || m.is_nan() {
                            m = v;
                        }
                    }
                    emit(&mut out, g.labels, m);
                }
                "stddev" | "stdvar" => {
                    let (mut n, mut mean, mut cmean, mut aux, mut caux) = (0.0, 0.0, 0.0, 0.0, 0.0);
                    for v in vals() {
                        n += 1.0;
                        let delta = v - (mean + cmean);
                        (mean, cmean) = kahan_inc(delta / n, mean, cmean);
                        (aux, caux) = kahan_inc(delta * (v - (mean + cmean)), aux, caux);
                    }
                    let var = (aux + caux) / n;
                    emit(
                        &mut out,
                        g.labels,
                        if op == "stddev" { var.sqrt() } else { var },
                    );
                }
                "quantile" => {
                    let q = scalar_param()?;
                    let mut vs: Vec<f64> = vals().collect();
                    emit(&mut out, g.labels, quantile(q, &mut vs));
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
