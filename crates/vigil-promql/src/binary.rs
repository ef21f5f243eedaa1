//! Binary operators: arithmetic, comparison (with `bool`), set operators, vector matching.

use std::sync::Arc;

use hashbrown::{HashMap, HashSet};
use promql_parser::parser::{BinModifier, BinaryExpr, LabelModifier, VectorMatchCardinality};
use vigil_model::{Labels, METRIC_NAME};

use crate::eval::{Evaluator, Sample, Value};
use crate::{DisplayLabels, Error, Result};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl Op {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s.to_lowercase().as_str() {
            "+" => Op::Add,
            "-" => Op::Sub,
            "*" => Op::Mul,
            "/" => Op::Div,
            "%" => Op::Mod,
            "^" => Op::Pow,
            "atan2" => Op::Atan2,
            "==" => Op::Eq,
            "!=" => Op::Ne,
            ">" => Op::Gt,
            "<" => Op::Lt,
            ">=" => Op::Ge,
            "<=" => Op::Le,
            "and" => Op::And,
            "or" => Op::Or,
            "unless" => Op::Unless,
            other => return Err(Error::BadData(format!("unknown binary operator {other:?}"))),
        })
    }

    fn is_comparison(self) -> bool {
        matches!(self, Op::Eq | Op::Ne | Op::Gt | Op::Lt | Op::Ge | Op::Le)
    }

    fn is_set(self) -> bool {
        matches!(self, Op::And | Op::Or | Op::Unless)
    }

    /// `(value, keep)`: arithmetic always keeps; comparisons keep the left value when true.
    fn apply(self, l: f64, r: f64) -> (f64, bool) {
        match self {
            Op::Add => (l + r, true),
            Op::Sub => (l - r, true),
            Op::Mul => (l * r, true),
            Op::Div => (l / r, true),
            Op::Mod => (l % r, true),
            Op::Pow => (l.powf(r), true),
            Op::Atan2 => (l.atan2(r), true),
            Op::Eq => (l, l == r),
            Op::Ne => (l, l != r),
            Op::Gt => (l, l > r),
            Op::Lt => (l, l < r),
            Op::Ge => (l, l >= r),
            Op::Le => (l, l <= r),
            Op::And | Op::Or | Op::Unless => (l, true),
        }
    }
}

/// The matching signature of a series: the `on` labels, or all but the `ignoring` labels
/// and the metric name.
fn signature(m: &Labels, matching: &Option<LabelModifier>, buf: &mut Vec<u8>) {
    buf.clear();
    for l in m.iter() {
        let take = match matching {
            Some(LabelModifier::Include(ls)) => ls.labels.iter().any(|n| n == &l.name),
            Some(LabelModifier::Exclude(ls)) => {
                l.name != METRIC_NAME && !ls.labels.iter().any(|n| n == &l.name)
            }
            None => l.name != METRIC_NAME,
        };
        if take {
            buf.extend_from_slice(l.name.as_bytes());
            buf.push(0xfe);
            buf.extend_from_slice(l.value.as_bytes());
            buf.push(0xff);
        }
    }
}

fn match_labels(m: &Labels, matching: &Option<LabelModifier>) -> Labels {
    Labels::from_sorted(
        m.iter()
            .filter(|l| match matching {
                Some(LabelModifier::Include(ls)) => ls.labels.iter().any(|n| n == &l.name),
                Some(LabelModifier::Exclude(ls)) => {
                    l.name != METRIC_NAME && !ls.labels.iter().any(|n| n == &l.name)
                }
                None => l.name != METRIC_NAME,
            })
            .cloned()
            .collect(),
    )
}

impl Evaluator<'_> {
    pub(crate) fn eval_binary(&self, b: &BinaryExpr, t: i64) -> Result<Value> {
        let op = Op::parse(&b.op.to_string())?;
        let return_bool = b.return_bool();
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => {
                let (v, keep) = op.apply(l, r);
                Ok(Value::Scalar(if op.is_comparison() {
                    if keep { 1.0 } else { 0.0 }
                } else {
                    v
                }))
            }
            (Value::Vector(l), Value::Scalar(r)) => Ok(Value::Vector(vector_scalar(
                op,
                l,
                r,
                false,
                return_bool,
                t,
            ))),
            (Value::Scalar(l), Value::Vector(r)) => {
                Ok(Value::Vector(vector_scalar(op, r, l, true, return_bool, t)))
            }
            (Value::Vector(l), Value::Vector(r)) => {
                let default = BinModifier::default();
                let m = b.modifier.as_ref().unwrap_or(&default);
                if op.is_set() {
                    Ok(Value::Vector(set_op(op, l, r, &m.matching)))
                } else {
                    Ok(Value::Vector(vector_binop(op, l, r, m, return_bool, t)?))
                }
            }
            _ => Err(Error::BadData(
                "binary operators work on scalars and instant vectors only".into(),
            )),
        }
    }
}

fn vector_scalar(
    op: Op,
    v: Vec<Sample>,
    s: f64,
    swap: bool,
    return_bool: bool,
    t: i64,
) -> Vec<Sample> {
    let mut out = Vec::with_capacity(v.len());
    for mut e in v {
        let (l, r) = if swap { (s, e.v) } else { (e.v, s) };
        let (mut val, mut keep) = op.apply(l, r);
        if op.is_comparison() && swap {
            val = r;
        }
        if return_bool {
            val = if keep { 1.0 } else { 0.0 };
            keep = true;
        }
        if keep {
            e.v = val;
            e.t = t;
            if !op.is_comparison() || return_bool {
                e.drop_name = true;
            }
            out.push(e);
        }
    }
    out
}

/// The matching signatures of a vector.
fn signatures(v: &[Sample], matching: &Option<LabelModifier>) -> HashSet<Vec<u8>> {
    let mut buf = Vec::new();
    v.iter()
        .map(|s| {
            signature(&s.metric, matching, &mut buf);
            buf.clone()
        })
        .collect()
}

fn set_op(
    op: Op,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    matching: &Option<LabelModifier>,
) -> Vec<Sample> {
    if lhs.is_empty() || rhs.is_empty() {
        return match op {
            Op::And => Vec::new(),
            Op::Or if lhs.is_empty() => rhs,
            _ => lhs,
        };
    }
    let mut buf = Vec::new();
    let mut has = |set: &HashSet<Vec<u8>>, s: &Sample| {
        signature(&s.metric, matching, &mut buf);
        set.contains(&buf)
    };
    match op {
        Op::And => {
            let right = signatures(&rhs, matching);
            lhs.into_iter().filter(|s| has(&right, s)).collect()
        }
        Op::Or => {
            let left = signatures(&lhs, matching);
            let mut out = lhs;
            out.extend(rhs.into_iter().filter(|s| !has(&left, s)));
            out
        }
        _ => {
            let right = signatures(&rhs, matching);
            lhs.into_iter().filter(|s| !has(&right, s)).collect()
        }
    }
}

fn vector_binop(
    op: Op,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    m: &BinModifier,
    return_bool: bool,
    t: i64,
) -> Result<Vec<Sample>> {
    if lhs.is_empty() || rhs.is_empty() {
        return Ok(Vec::new());
    }
    let (card_one_to_many, include) = match &m.card {
        VectorMatchCardinality::OneToOne | VectorMatchCardinality::ManyToMany => (false, None),
        VectorMatchCardinality::ManyToOne(ls) => (false, Some(&ls.labels)),
        VectorMatchCardinality::OneToMany(ls) => (true, Some(&ls.labels)),
    };
    let one_to_one = matches!(m.card, VectorMatchCardinality::OneToOne);
    let (many, one) = if card_one_to_many {
        (rhs, lhs)
    } else {
        (lhs, rhs)
    };
    let mut buf = Vec::new();
    let mut right: HashMap<Vec<u8>, usize> = HashMap::with_capacity(one.len());
    for (i, rs) in one.iter().enumerate() {
        signature(&rs.metric, &m.matching, &mut buf);
        if let Some(&j) = right.get(&buf) {
            let side = if card_one_to_many { "left" } else { "right" };
            return Err(Error::Execution(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                DisplayLabels(&match_labels(&rs.metric, &m.matching)),
                DisplayLabels(&one[j].metric),
                DisplayLabels(&rs.metric),
            )));
        }
        right.insert(buf.clone(), i);
    }
    let mut matched: HashMap<Vec<u8>, HashSet<Labels>> = HashMap::new();
    let mut out = Vec::new();
    for ls in many {
        signature(&ls.metric, &m.matching, &mut buf);
        let Some(&ri) = right.get(&buf) else { continue };
        let rs = &one[ri];
        let (fl, fr) = if card_one_to_many {
            (rs.v, ls.v)
        } else {
            (ls.v, rs.v)
        };
        let (mut v, keep) = op.apply(fl, fr);
        if return_bool {
            v = if keep { 1.0 } else { 0.0 };
        }
        // Result labels (computed before filtering: matching errors are reported even for
        // pairs a comparison would drop).
        let mut metric = (*ls.metric).clone();
        if one_to_one {
            match &m.matching {
                Some(LabelModifier::Include(names)) => {
                    metric = Labels::from_sorted(
                        metric
                            .into_vec()
                            .into_iter()
                            .filter(|l| names.labels.iter().any(|n| n == &l.name))
                            .collect(),
                    );
                }
                Some(LabelModifier::Exclude(names)) => {
                    for n in &names.labels {
                        metric.remove(n);
                    }
                }
                None => {}
            }
        }
        if let Some(inc) = include {
            for n in inc {
                match rs.metric.get(n) {
                    Some(v) => metric.set(n, v),
                    None => metric.remove(n),
                }
            }
        }
        let drop_name = ls.drop_name || return_bool || !op.is_comparison();
        let entry = matched.entry(buf.clone());
        match entry {
            hashbrown::hash_map::Entry::Occupied(mut o) => {
                if one_to_one {
                    return Err(Error::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
                let mut key = metric.clone();
                if drop_name {
                    key.remove(METRIC_NAME);
                }
                if !o.get_mut().insert(key) {
                    return Err(Error::Execution(
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into(),
                    ));
                }
            }
            hashbrown::hash_map::Entry::Vacant(vac) => {
                let mut set = HashSet::new();
                if !one_to_one {
                    let mut key = metric.clone();
                    if drop_name {
                        key.remove(METRIC_NAME);
                    }
                    set.insert(key);
                }
                vac.insert(set);
            }
        }
        if !return_bool && !keep {
            continue;
        }
        out.push(Sample {
            metric: Arc::new(metric),
            t,
            v,
            drop_name,
        });
    }
    Ok(out)
}
