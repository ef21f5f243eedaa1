//! Query annotations: Prometheus' non-fatal warnings and infos ("quantile value should be
//! between 0 and 1", "metric might not be a counter", …), with the position in the query text
//! of the expression they are about, formatted as Prometheus 3 does.
//!
//! The evaluator records an annotation against the AST node it is about (its address); the
//! position is only worked out at the end, and only when there is something to report, by
//! matching the query text's function calls to the AST's in source order
//! (promql-parser's AST carries no positions).

use std::cell::RefCell;
use std::collections::HashMap;

use promql_parser::parser::Expr;

/// Warnings and infos of one query, each formatted as Prometheus' API reports it
/// (`PromQL warning: … (line:column)`), deduplicated, in the order first raised.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotations {
    /// `PromQL warning: …` messages.
    pub warnings: Vec<String>,
    /// `PromQL info: …` messages.
    pub infos: Vec<String>,
}

impl Annotations {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.warnings.is_empty() && self.infos.is_empty()
    }
}

/// Whether an annotation is a warning or an info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Warning,
    Info,
}

/// Extra detail merged across raises of the same annotation: `histogram_quantile`'s
/// forced-monotonicity info reports the span of times, buckets and the largest fix.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Monotonicity {
    pub t: i64,
    pub min_bucket: f64,
    pub max_bucket: f64,
    pub max_diff: f64,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    message: String,
    /// Address of the AST node the annotation is about.
    node: usize,
    mono: Option<(Monotonicity, i64, usize)>,
}

/// What an evaluation raised so far (interior mutability: the evaluator is shared by `&`).
#[derive(Debug, Default)]
pub(crate) struct Collector {
    entries: RefCell<Vec<Entry>>,
}

/// Address of an AST node, the key annotations are recorded under.
pub(crate) fn node<T>(n: &T) -> usize {
    n as *const T as usize
}

impl Collector {
    /// Records `message` (without its `PromQL warning: ` prefix) about `node`; a message
    /// already raised is kept once.
    pub(crate) fn add(&self, kind: Kind, message: String, node: usize) {
        let mut e = self.entries.borrow_mut();
        if e.iter().any(|x| x.kind == kind && x.message == message) {
            return;
        }
        e.push(Entry {
            kind,
            message,
            node,
            mono: None,
        });
    }

    /// Records a forced-monotonicity info, merged with earlier ones of the same message.
    pub(crate) fn add_monotonicity(&self, message: String, node: usize, m: Monotonicity) {
        let mut e = self.entries.borrow_mut();
        if let Some(x) = e
            .iter_mut()
            .find(|x| x.kind == Kind::Info && x.message == message)
        {
            if let Some((acc, max_t, count)) = &mut x.mono {
                acc.t = acc.t.min(m.t);
                *max_t = (*max_t).max(m.t);
                acc.min_bucket = acc.min_bucket.min(m.min_bucket);
                acc.max_bucket = acc.max_bucket.max(m.max_bucket);
                acc.max_diff = acc.max_diff.max(m.max_diff);
                *count += 1;
            }
            return;
        }
        e.push(Entry {
            kind: Kind::Info,
            message,
            node,
            mono: Some((m, m.t, 1)),
        });
    }

    /// "quantile value should be between 0 and 1" when `q` is not, about argument `arg`.
    pub(crate) fn check_quantile(&self, q: f64, arg: &Expr) {
        if q.is_nan() || !(0.0..=1.0).contains(&q) {
            self.add(
                Kind::Warning,
                format!(
                    "quantile value should be between 0 and 1, got {}",
                    go_g(q, None)
                ),
                node(arg),
            );
        }
    }

    /// The formatted annotations; positions are found in `query` (the text `root` was
    /// parsed from) when given.
    pub(crate) fn finish(self, root: &Expr, query: Option<&str>) -> Annotations {
        let entries = self.entries.into_inner();
        let mut out = Annotations::default();
        if entries.is_empty() {
            return out;
        }
        let positions = query.map(|q| (q, positions(root, q)));
        for e in entries {
            let prefix = match e.kind {
                Kind::Warning => "PromQL warning: ",
                Kind::Info => "PromQL info: ",
            };
            let mut s = format!("{prefix}{}", e.message);
            if let Some((m, max_t, count)) = e.mono {
                s.push_str(&format!(
                    ", from buckets {} to {}, with a max diff of {}, over {} samples from {} to {}",
                    go_g(m.min_bucket, None),
                    go_g(m.max_bucket, None),
                    go_g(m.max_diff, Some(2)),
                    count,
                    rfc3339(m.t),
                    rfc3339(max_t)
                ));
            }
            if let Some((q, map)) = &positions {
                match map.get(&e.node) {
                    Some(&off) => s.push_str(&format!(" ({})", line_col(q, off))),
                    None => s.push_str(" (unknown position)"),
                }
            }
            match e.kind {
                Kind::Warning => out.warnings.push(s),
                Kind::Info => out.infos.push(s),
            }
        }
        out
    }
}

/// `line:column` (both from 1, column in bytes) of byte offset `off` in `q`.
fn line_col(q: &str, off: usize) -> String {
    let before = &q.as_bytes()[..off.min(q.len())];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let col = off
        - before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1)
        + 1;
    format!("{line}:{col}")
}

/// A seconds-resolution RFC 3339 UTC time of `t_ms`, as Go's `time.RFC3339` prints it.
fn rfc3339(t_ms: i64) -> String {
    let secs = t_ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = crate::functions::civil(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Go's `%g` (`prec` `None`: shortest representation, as `fmt.Sprintf("%g", v)`).
pub(crate) fn go_g(v: f64, prec: Option<usize>) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let neg = v.is_sign_negative();
    let sci = match prec {
        None => format!("{:e}", v.abs()),
        Some(p) => format!("{:.*e}", p.max(1) - 1, v.abs()),
    };
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let nd = digits.len() as i32;
    let dp = exp + 1;
    let eprec = match prec {
        None => 6,
        Some(p) if (p as i32) > nd && nd >= dp => nd,
        Some(p) => p as i32,
    };
    let mut s = String::with_capacity(24);
    if neg {
        s.push('-');
    }
    if v == 0.0 {
        s.push('0');
        return s;
    }
    if exp < -4 || exp >= eprec {
        s.push_str(&digits[..1]);
        if nd > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push('e');
        s.push(if exp < 0 { '-' } else { '+' });
        s.push_str(&format!("{:02}", exp.unsigned_abs()));
    } else if dp <= 0 {
        s.push_str("0.");
        s.extend(std::iter::repeat_n('0', (-dp) as usize));
        s.push_str(&digits);
    } else if dp >= nd {
        s.push_str(&digits);
        s.extend(std::iter::repeat_n('0', (dp - nd) as usize));
    } else {
        s.push_str(&digits[..dp as usize]);
        s.push('.');
        s.push_str(&digits[dp as usize..]);
    }
    s
}

/// A function call or aggregation in the query text: where its name starts and where each
/// of its parenthesised arguments starts.
#[derive(Debug, PartialEq)]
struct CallText<'q> {
    name: &'q str,
    at: usize,
    args: Vec<usize>,
}

const AGGREGATIONS: [&str; 14] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "topk",
    "bottomk",
    "quantile",
    "limitk",
    "limit_ratio",
];

/// Byte offset after whitespace and `#` comments from `i`.
fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
        } else if b[i] == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else {
            break;
        }
    }
    i
}

/// Byte offset just past the string literal starting at `i`.
fn skip_string(b: &[u8], i: usize) -> usize {
    let quote = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == b'\\' && quote != b'`' {
            j += 2;
            continue;
        }
        if b[j] == quote {
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

fn ident_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
        i += 1;
    }
    i
}

/// Offsets of the top-level arguments inside the parenthesis at `open`.
fn arg_starts(b: &[u8], open: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut i = open + 1;
    let mut expect_arg = true;
    while i < b.len() {
        let c = b[i];
        if expect_arg {
            i = skip_space(b, i);
            if i >= b.len() {
                break;
            }
            if depth == 0 && b[i] != b')' {
                out.push(i);
            }
            expect_arg = false;
            continue;
        }
        match c {
            b'"' | b'\'' | b'`' => {
                i = skip_string(b, i);
                continue;
            }
            b'#' => {
                i = skip_space(b, i);
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
            }
            b',' if depth == 0 => expect_arg = true,
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every function call and aggregation in `q`, in source order.
fn scan_calls(q: &str) -> Vec<CallText<'_>> {
    let b = q.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut after_at = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i = skip_string(b, i);
                after_at = false;
            }
            b'#' => i = skip_space(b, i),
            b'@' => {
                after_at = true;
                i += 1;
            }
            b'0'..=b'9' | b'.' => {
                // Numbers and durations (`5m`, `1e3`, `0x1f`) are one token.
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                after_at = false;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let end = ident_end(b, i);
                let name = &q[i..end];
                let mut j = skip_space(b, end);
                let at_fn = std::mem::take(&mut after_at);
                if !at_fn
                    && AGGREGATIONS.contains(&name.to_ascii_lowercase().as_str())
                    && j < b.len()
                    && b[j].is_ascii_alphabetic()
                {
                    // `sum by (zone) (…)`: the arguments follow the grouping.
                    let kw_end = ident_end(b, j);
                    let kw = q[j..kw_end].to_ascii_lowercase();
                    if kw == "by" || kw == "without" {
                        let open = skip_space(b, kw_end);
                        if open < b.len() && b[open] == b'(' {
                            let mut k = open + 1;
                            while k < b.len() && b[k] != b')' {
                                k = if matches!(b[k], b'"' | b'\'' | b'`') {
                                    skip_string(b, k)
                                } else {
                                    k + 1
                                };
                            }
                            j = skip_space(b, k + 1);
                        }
                    }
                }
                let keyword = matches!(
                    name.to_ascii_lowercase().as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right" | "bool"
                );
                if !at_fn && !keyword && j < b.len() && b[j] == b'(' {
                    out.push(CallText {
                        name,
                        at: i,
                        args: arg_starts(b, j),
                    });
                }
                i = end;
            }
            _ => {
                if !c.is_ascii_whitespace() {
                    after_at = false;
                }
                i += 1;
            }
        }
    }
    out
}

/// Calls and aggregations of `e` in source order (pre-order), with their name and the
/// addresses of the node and of each argument as the text lists them.
fn ast_calls(e: &Expr, out: &mut Vec<(String, usize, Vec<usize>)>) {
    match e {
        Expr::Aggregate(a) => {
            let mut args = Vec::new();
            if let Some(p) = &a.param {
                args.push(node::<Expr>(p));
            }
            args.push(node::<Expr>(&a.expr));
            out.push((a.op.to_string().to_lowercase(), node(a), args));
            if let Some(p) = &a.param {
                ast_calls(p, out);
            }
            ast_calls(&a.expr, out);
        }
        Expr::Call(c) => {
            let args = c.args.args.iter().map(|a| node::<Expr>(a)).collect();
            out.push((c.func.name.to_string(), node(c), args));
            for a in &c.args.args {
                ast_calls(a, out);
            }
        }
        Expr::Unary(u) => ast_calls(&u.expr, out),
        Expr::Binary(b) => {
            ast_calls(&b.lhs, out);
            ast_calls(&b.rhs, out);
        }
        Expr::Paren(p) => ast_calls(&p.expr, out),
        Expr::Subquery(s) => ast_calls(&s.expr, out),
        Expr::MatrixSelector(_)
        | Expr::VectorSelector(_)
        | Expr::NumberLiteral(_)
        | Expr::StringLiteral(_)
        | Expr::Extension(_) => {}
    }
}

/// Byte offsets in `q` of the calls, aggregations and their arguments of `root`, by node
/// address; empty when the text and the AST do not line up.
fn positions(root: &Expr, q: &str) -> HashMap<usize, usize> {
    let text = scan_calls(q);
    let mut ast = Vec::new();
    ast_calls(root, &mut ast);
    let mut map = HashMap::new();
    if text.len() != ast.len() {
        return map;
    }
    for (t, (name, n, args)) in text.iter().zip(&ast) {
        if !t.name.eq_ignore_ascii_case(name) || t.args.len() != args.len() {
            return HashMap::new();
        }
        map.insert(*n, t.at);
        for (a, off) in args.iter().zip(&t.args) {
            map.insert(*a, *off);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_g_matches_go() {
        for (v, want) in [
            (0.0, "0"),
            (1.0, "1"),
            (1.5, "1.5"),
            (-0.1, "-0.1"),
            (100000.0, "100000"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
        ] {
            assert_eq!(go_g(v, None), want, "{v}");
        }
        for (v, want) in [
            (5.0, "5"),
            (12.0, "12"),
            (123.0, "1.2e+02"),
            (0.5, "0.5"),
            (1.0, "1"),
        ] {
            assert_eq!(go_g(v, Some(2)), want, "{v}");
        }
    }

    #[test]
    fn rfc3339_prints_utc_seconds() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(3_000_999), "1970-01-01T00:50:00Z");
        assert_eq!(rfc3339(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }

    fn pos_of(q: &str, pick: impl Fn(&Expr) -> usize) -> Option<String> {
        let e = promql_parser::parser::parse(q).unwrap();
        positions(&e, q).get(&pick(&e)).map(|&o| line_col(q, o))
    }

    #[test]
    fn positions_follow_the_text() {
        let arg = |i: usize| {
            move |e: &Expr| match crate::eval::unwrap_parens(e) {
                Expr::Call(c) => node::<Expr>(&c.args.args[i]),
                _ => 0,
            }
        };
        assert_eq!(
            pos_of("histogram_quantile(0.8, series)", arg(1)).as_deref(),
            Some("1:25")
        );
        assert_eq!(
            pos_of("histogram_fraction(-Inf, 1, series)", arg(2)).as_deref(),
            Some("1:29")
        );
        // Strings with parentheses and commas, `@ start()`, a grouping before the arguments,
        // comments and a second line.
        let q = "sum by (a) (rate(x{l=\"(,)\"}[5m] @ start()))\n  + # c(\n  quantile(0.5, y)";
        let e = promql_parser::parser::parse(q).unwrap();
        let map = positions(&e, q);
        let Expr::Binary(b) = &e else { panic!() };
        let Expr::Aggregate(sum) = &*b.lhs else {
            panic!()
        };
        let Expr::Aggregate(qu) = &*b.rhs else {
            panic!()
        };
        assert_eq!(line_col(q, map[&node(sum)]), "1:1");
        assert_eq!(line_col(q, map[&node::<Expr>(&sum.expr)]), "1:13");
        assert_eq!(
            line_col(q, map[&node::<Expr>(qu.param.as_deref().unwrap())]),
            "3:12"
        );
        // Text and AST that do not line up give no positions rather than wrong ones.
        let other = promql_parser::parser::parse("rate(x[5m])").unwrap();
        assert!(positions(&other, "sum(rate(x[5m]))").is_empty());
    }
}
