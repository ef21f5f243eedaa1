//! The part of Go's `text/template` that Prometheus rule annotations and Alertmanager
//! notification templates use: `{{ $labels.instance }}`, `{{ $value | humanize }}`,
//! `{{ printf "%.2f" $value }}`, `{{ if }}…{{ else }}…{{ end }}`, `{{ range }}`, `{{ with }}`,
//! variables, pipelines, trim markers and comments, with Prometheus' and Alertmanager's
//! functions (`humanize*`, `title`, `toUpper`, `reReplaceAll`, `join`, `query`, …).
//!
//! A template is parsed once ([`Template::parse`], which is what rule checking calls) and
//! executed against a [`Value`] many times.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A value templates compute with.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Go's `nil`.
    Nil,
    /// A boolean.
    Bool(bool),
    /// A number (Go's int and float alike).
    Num(f64),
    /// A string.
    Str(String),
    /// A map from string keys (labels, annotations, the data of a notification).
    Map(BTreeMap<String, Value>),
    /// A list (query results, the alerts of a notification).
    List(Vec<Value>),
}

impl Value {
    /// A map of strings.
    pub fn str_map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
        Value::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), Value::Str(v.to_string())))
                .collect(),
        )
    }

    fn truthy(&self) -> bool {
        match self {
            Value::Nil => false,
            Value::Bool(b) => *b,
            Value::Num(n) => *n != 0.0,
            Value::Str(s) => !s.is_empty(),
            Value::Map(m) => !m.is_empty(),
            Value::List(l) => !l.is_empty(),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "bool",
            Value::Num(_) => "number",
            Value::Str(_) => "string",
            Value::Map(_) => "map",
            Value::List(_) => "list",
        }
    }

    fn render(&self, out: &mut String) {
        match self {
            Value::Nil => out.push_str("<no value>"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Num(n) => out.push_str(&go_number(*n)),
            Value::Str(s) => out.push_str(s),
            Value::Map(m) => {
                out.push_str("map[");
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    out.push_str(k);
                    out.push(':');
                    v.render(out);
                }
                out.push(']');
            }
            Value::List(l) => {
                out.push('[');
                for (i, v) in l.iter().enumerate() {
                    if i > 0 {
                        out.push(' ');
                    }
                    v.render(out);
                }
                out.push(']');
            }
        }
    }

    fn as_num(&self) -> Result<f64, String> {
        match self {
            Value::Num(n) => Ok(*n),
            Value::Str(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("cannot convert {s:?} to a number")),
            Value::Bool(b) => Ok(f64::from(u8::from(*b))),
            other => Err(format!("expected a number, got {}", other.type_name())),
        }
    }

    fn as_str(&self) -> String {
        let mut s = String::new();
        self.render(&mut s);
        s
    }
}

/// Go's default formatting of a float (`%v`): shortest representation, exponent outside
/// [1e-4, 1e21).
fn go_number(n: f64) -> String {
    if n.is_nan() {
        return "NaN".into();
    }
    if n.is_infinite() {
        return if n > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if n == n.trunc() && n.abs() < 1e21 {
        return format!("{}", n as i128);
    }
    let a = n.abs();
    if !(1e-4..1e21).contains(&a) {
        let s = format!("{n:e}");
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    format!("{n}")
}

/// Go's `%.{prec}g`.
pub fn fmt_g(v: f64, prec: usize) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let p = prec.max(1);
    let s = format!("{:.*e}", p - 1, v);
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = e.parse().unwrap_or(0);
    if exp < -4 || exp >= p as i32 {
        let m = trim_zeros(m);
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    } else {
        let decimals = (p as i32 - 1 - exp).max(0) as usize;
        trim_zeros(&format!("{v:.decimals$}")).to_string()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// A template that failed to parse or to run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("template: {name}: {message}")]
pub struct TemplateError {
    /// The template's name (the annotation or field it came from).
    pub name: String,
    /// What went wrong.
    pub message: String,
}

#[derive(Debug, Clone)]
enum Arg {
    Dot(Vec<String>),
    Var(String, Vec<String>),
    Str(String),
    Num(f64),
    Bool(bool),
    Nil,
    Func(String),
    Sub(Box<Pipe>, Vec<String>),
}

#[derive(Debug, Clone)]
struct Pipe {
    decl: Option<(String, bool)>, // (variable, is_declaration)
    cmds: Vec<Vec<Arg>>,
}

#[derive(Debug, Clone)]
enum Node {
    Text(String),
    Action(Pipe),
    If(Pipe, Vec<Node>, Vec<Node>),
    With(Pipe, Vec<Node>, Vec<Node>),
    Range(Option<(String, Option<String>)>, Pipe, Vec<Node>, Vec<Node>),
}

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    name: String,
    nodes: Vec<Node>,
}

/// Runs `query "<expr>"` for templates; rule evaluation passes the engine, checking passes none.
pub type QueryFn<'a> = &'a dyn Fn(&str) -> Result<Vec<Value>, String>;

const FUNCS: &[&str] = &[
    "humanize",
    "humanize1024",
    "humanizeDuration",
    "humanizePercentage",
    "humanizeTimestamp",
    "printf",
    "print",
    "println",
    "toUpper",
    "toLower",
    "title",
    "reReplaceAll",
    "match",
    "safeHtml",
    "stripPort",
    "stripDomain",
    "first",
    "label",
    "value",
    "sortByLabel",
    "query",
    "len",
    "index",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "and",
    "or",
    "not",
    "html",
    "js",
    "urlquery",
    "toTime",
    "parseDuration",
    "externalURL",
    "pathPrefix",
    "strvalue",
    "join",
    "stringSlice",
    "args",
    "trimSpace",
    "toJson",
];

// ---------------------------------------------------------------- lexing and parsing

enum Tok {
    Text(String),
    Action(String),
}

fn split(src: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while !rest.is_empty() {
        match rest.find("{{") {
            None => {
                let t = if trim_next { rest.trim_start() } else { rest };
                toks.push(Tok::Text(t.to_string()));
                break;
            }
            Some(i) => {
                let mut text = &rest[..i];
                if trim_next {
                    text = text.trim_start();
                }
                let after = &rest[i + 2..];
                let trim_left = after.starts_with("- ") || after.starts_with("-\t") || after == "-";
                if trim_left {
                    text = text.trim_end();
                }
                if !text.is_empty() {
                    toks.push(Tok::Text(text.to_string()));
                }
                let body_start = if trim_left { 1 } else { 0 };
                // Find the closing braces outside string literals.
                let bytes = after.as_bytes();
                let mut j = body_start;
                let mut in_str: Option<u8> = None;
                let mut close = None;
                while j < bytes.len() {
                    let c = bytes[j];
                    match in_str {
                        Some(q) => {
                            if c == b'\\' && q == b'"' {
                                j += 1;
                            } else if c == q {
                                in_str = None;
                            }
                        }
                        None => {
                            if c == b'"' || c == b'`' || c == b'\'' {
                                in_str = Some(c);
                            } else if c == b'}' && bytes.get(j + 1) == Some(&b'}') {
                                close = Some(j);
                                break;
                            }
                        }
                    }
                    j += 1;
                }
                let Some(close) = close else {
                    return Err("unclosed action".into());
                };
                let mut body = &after[body_start..close];
                trim_next = false;
                if body.ends_with(" -") || body.ends_with("\t-") {
                    body = &body[..body.len() - 1];
                    trim_next = true;
                }
                let body = body.trim();
                if !(body.starts_with("/*") && body.ends_with("*/")) {
                    toks.push(Tok::Action(body.to_string()));
                }
                rest = &after[close + 2..];
            }
        }
    }
    Ok(toks)
}

struct ArgLexer<'a> {
    s: &'a str,
    i: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Word {
    Pipe,
    Open,
    Close,
    Decl,   // :=
    Assign, // =
    Comma,
    Atom(String),
    Str(String),
}

impl<'a> ArgLexer<'a> {
    fn words(s: &'a str) -> Result<Vec<Word>, String> {
        let mut lx = ArgLexer { s, i: 0 };
        let mut out = Vec::new();
        while let Some(w) = lx.next()? {
            out.push(w);
        }
        Ok(out)
    }

    fn next(&mut self) -> Result<Option<Word>, String> {
        let b = self.s.as_bytes();
        while self.i < b.len() && b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
        if self.i >= b.len() {
            return Ok(None);
        }
        let c = b[self.i];
        let w = match c {
            b'|' => {
                self.i += 1;
                Word::Pipe
            }
            b'(' => {
                self.i += 1;
                Word::Open
            }
            b')' => {
                self.i += 1;
                Word::Close
            }
            b',' => {
                self.i += 1;
                Word::Comma
            }
            b':' if b.get(self.i + 1) == Some(&b'=') => {
                self.i += 2;
                Word::Decl
            }
            b'=' => {
                self.i += 1;
                Word::Assign
            }
            b'"' => {
                let mut out = String::new();
                self.i += 1;
                let mut chars = self.s[self.i..].char_indices();
                loop {
                    let Some((k, ch)) = chars.next() else {
                        return Err("unterminated quoted string".into());
                    };
                    match ch {
                        '"' => {
                            self.i += k + 1;
                            break;
                        }
                        '\\' => {
                            let Some((_, e)) = chars.next() else {
                                return Err("unterminated quoted string".into());
                            };
                            out.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                '\\' => '\\',
                                '"' => '"',
                                other => return Err(format!("unknown escape sequence \\{other}")),
                            });
                        }
                        ch => out.push(ch),
                    }
                }
                Word::Str(out)
            }
            b'`' => {
                let rest = &self.s[self.i + 1..];
                let Some(end) = rest.find('`') else {
                    return Err("unterminated raw quoted string".into());
                };
                self.i += end + 2;
                Word::Str(rest[..end].to_string())
            }
            _ => {
                let start = self.i;
                while self.i < b.len() && !b"|(), \t\n\r".contains(&b[self.i]) {
                    if b[self.i] == b':' && b.get(self.i + 1) == Some(&b'=') {
                        break;
                    }
                    self.i += 1;
                }
                if start == self.i {
                    return Err(format!("unexpected {:?}", c as char));
                }
                Word::Atom(self.s[start..self.i].to_string())
            }
        };
        Ok(Some(w))
    }
}

fn fields_of(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    path.split('.')
        .map(|f| {
            if f.is_empty() || !f.chars().all(|c| c.is_alphanumeric() || c == '_') {
                Err(format!("bad field name {f:?}"))
            } else {
                Ok(f.to_string())
            }
        })
        .collect()
}

fn atom(a: &str, vars: &[String]) -> Result<Arg, String> {
    if a == "." {
        return Ok(Arg::Dot(Vec::new()));
    }
    if let Some(rest) = a.strip_prefix('.') {
        return Ok(Arg::Dot(fields_of(rest)?));
    }
    if let Some(rest) = a.strip_prefix('$') {
        let (name, path) = rest.split_once('.').unwrap_or((rest, ""));
        let var = format!("${name}");
        if !vars.contains(&var) {
            return Err(format!("undefined variable {var:?}"));
        }
        return Ok(Arg::Var(var, fields_of(path)?));
    }
    match a {
        "true" => return Ok(Arg::Bool(true)),
        "false" => return Ok(Arg::Bool(false)),
        "nil" => return Ok(Arg::Nil),
        _ => {}
    }
    if let Some(c) = a.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        let mut it = c.chars();
        if let (Some(ch), None) = (it.next(), it.next()) {
            return Ok(Arg::Num(f64::from(ch as u32)));
        }
    }
    if a.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') {
        return a
            .parse::<f64>()
            .map(Arg::Num)
            .map_err(|_| format!("bad number syntax: {a:?}"));
    }
    if FUNCS.contains(&a) {
        return Ok(Arg::Func(a.to_string()));
    }
    Err(format!("function {a:?} not defined"))
}

fn parse_pipe(words: &[Word], vars: &mut Vec<String>) -> Result<Pipe, String> {
    let mut decl = None;
    let mut w = words;
    // `$x := pipeline`, `$x = pipeline`
    if let [Word::Atom(v), op @ (Word::Decl | Word::Assign), rest @ ..] = w
        && v.starts_with('$')
        && !v.contains('.')
    {
        let is_decl = *op == Word::Decl;
        if !is_decl && !vars.contains(v) {
            return Err(format!("undefined variable {v:?}"));
        }
        decl = Some((v.clone(), is_decl));
        w = rest;
    }
    let mut cmds = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < w.len() {
        match &w[i] {
            Word::Pipe => {
                if cur.is_empty() {
                    return Err("missing command before '|'".into());
                }
                cmds.push(std::mem::take(&mut cur));
            }
            Word::Open => {
                let mut depth = 1;
                let mut j = i + 1;
                while j < w.len() && depth > 0 {
                    match w[j] {
                        Word::Open => depth += 1,
                        Word::Close => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                if depth != 0 {
                    return Err("unclosed left paren".into());
                }
                let inner = parse_pipe(&w[i + 1..j - 1], vars)?;
                // `(pipeline).Field`
                let mut fields = Vec::new();
                if let Some(Word::Atom(a)) = w.get(j)
                    && let Some(p) = a.strip_prefix('.')
                {
                    fields = fields_of(p)?;
                    i = j;
                } else {
                    i = j - 1;
                }
                cur.push(Arg::Sub(Box::new(inner), fields));
            }
            Word::Close => return Err("unexpected right paren".into()),
            Word::Str(s) => cur.push(Arg::Str(s.clone())),
            Word::Atom(a) => cur.push(atom(a, vars)?),
            Word::Decl | Word::Assign | Word::Comma => {
                return Err("unexpected assignment or comma".into());
            }
        }
        i += 1;
    }
    if cur.is_empty() {
        return Err(if cmds.is_empty() {
            "missing value for command".into()
        } else {
            "missing command after '|'".into()
        });
    }
    cmds.push(cur);
    for cmd in &cmds[..] {
        if cmd.len() > 1 && !matches!(cmd[0], Arg::Func(_)) {
            return Err("can't give argument to non-function".into());
        }
    }
    if let Some((v, true)) = &decl {
        vars.push(v.clone());
    }
    Ok(Pipe { decl, cmds })
}

enum Stop {
    End,
    Else(Option<String>), // `else` or `else if …`
    Eof,
}

struct Parser {
    toks: std::vec::IntoIter<Tok>,
    vars: Vec<String>,
}

impl Parser {
    fn list(&mut self) -> Result<(Vec<Node>, Stop), String> {
        let mut nodes = Vec::new();
        while let Some(t) = self.toks.next() {
            match t {
                Tok::Text(s) => nodes.push(Node::Text(s)),
                Tok::Action(a) => {
                    let (kw, rest) = match a.split_once(char::is_whitespace) {
                        Some((k, r)) => (k, r.trim()),
                        None => (a.as_str(), ""),
                    };
                    match kw {
                        "end" => return Ok((nodes, Stop::End)),
                        "else" => {
                            return Ok((
                                nodes,
                                Stop::Else((!rest.is_empty()).then(|| rest.to_string())),
                            ));
                        }
                        "if" | "with" => {
                            let node = self.conditional(kw, rest)?;
                            nodes.push(node);
                        }
                        "range" => nodes.push(self.range(rest)?),
                        "define" | "template" | "block" | "break" | "continue" => {
                            return Err(format!("{kw:?} is not supported"));
                        }
                        _ => {
                            let words = ArgLexer::words(&a)?;
                            nodes.push(Node::Action(parse_pipe(&words, &mut self.vars)?));
                        }
                    }
                }
            }
        }
        Ok((nodes, Stop::Eof))
    }

    fn conditional(&mut self, kw: &str, cond: &str) -> Result<Node, String> {
        let mark = self.vars.len();
        let pipe = parse_pipe(&ArgLexer::words(cond)?, &mut self.vars)?;
        let (then, stop) = self.list()?;
        let els = match stop {
            Stop::End => Vec::new(),
            Stop::Eof => return Err(format!("unexpected EOF in {kw}")),
            Stop::Else(None) => {
                let (e, stop) = self.list()?;
                if !matches!(stop, Stop::End) {
                    return Err(format!("expected end after else in {kw}"));
                }
                e
            }
            Stop::Else(Some(rest)) => {
                let (k2, r2) = rest.split_once(char::is_whitespace).unwrap_or((&rest, ""));
                if k2 != "if" && k2 != "with" {
                    return Err(format!("unexpected {rest:?} after else"));
                }
                vec![self.conditional(k2, r2.trim())?]
            }
        };
        self.vars.truncate(mark);
        Ok(if kw == "if" {
            Node::If(pipe, then, els)
        } else {
            Node::With(pipe, then, els)
        })
    }

    fn range(&mut self, spec: &str) -> Result<Node, String> {
        let mark = self.vars.len();
        let words = ArgLexer::words(spec)?;
        let (bind, rest): (Option<(String, Option<String>)>, &[Word]) = match &words[..] {
            [
                Word::Atom(a),
                Word::Comma,
                Word::Atom(b),
                Word::Decl,
                rest @ ..,
            ] => (Some((a.clone(), Some(b.clone()))), rest),
            [Word::Atom(a), Word::Decl, rest @ ..] if a.starts_with('$') => {
                (Some((a.clone(), None)), rest)
            }
            _ => (None, &words[..]),
        };
        let pipe = parse_pipe(rest, &mut self.vars)?;
        if let Some((a, b)) = &bind {
            self.vars.push(a.clone());
            if let Some(b) = b {
                self.vars.push(b.clone());
            }
        }
        let (body, stop) = self.list()?;
        let els = match stop {
            Stop::End => Vec::new(),
            Stop::Else(None) => {
                let (e, stop) = self.list()?;
                if !matches!(stop, Stop::End) {
                    return Err("expected end after else in range".into());
                }
                e
            }
            _ => return Err("unexpected EOF or else-if in range".into()),
        };
        self.vars.truncate(mark);
        Ok(Node::Range(bind, pipe, body, els))
    }
}

impl Template {
    /// Parses `src`; `vars` are the variables predeclared for it (`$labels`, `$value`, …).
    pub fn parse(name: &str, src: &str, vars: &[&str]) -> Result<Self, TemplateError> {
        let err = |message: String| TemplateError {
            name: name.to_string(),
            message,
        };
        let toks = split(src).map_err(err)?;
        let mut p = Parser {
            toks: toks.into_iter(),
            vars: std::iter::once("$".to_string())
                .chain(vars.iter().map(|v| v.to_string()))
                .collect(),
        };
        let (nodes, stop) = p.list().map_err(err)?;
        match stop {
            Stop::Eof => Ok(Self {
                name: name.to_string(),
                nodes,
            }),
            Stop::End => Err(err("unexpected {{end}}".into())),
            Stop::Else(_) => Err(err("unexpected {{else}}".into())),
        }
    }

    /// Executes with `dot` as `.` and `vars` bound; `query` serves the `query` function.
    pub fn execute(
        &self,
        dot: &Value,
        vars: &[(&str, Value)],
        query: Option<QueryFn<'_>>,
    ) -> Result<String, TemplateError> {
        let mut ex = Exec {
            vars: std::iter::once(("$".to_string(), dot.clone()))
                .chain(vars.iter().map(|(k, v)| (k.to_string(), v.clone())))
                .collect(),
            query,
            steps: 0,
        };
        let mut out = String::new();
        ex.nodes(&self.nodes, dot, &mut out)
            .map_err(|message| TemplateError {
                name: self.name.clone(),
                message,
            })?;
        Ok(out)
    }
}

// ---------------------------------------------------------------- execution

struct Exec<'q> {
    vars: Vec<(String, Value)>,
    query: Option<QueryFn<'q>>,
    steps: usize,
}

const MAX_STEPS: usize = 100_000;
const MAX_OUTPUT: usize = 1 << 20;

fn field(mut v: Value, fields: &[String]) -> Result<Value, String> {
    for f in fields {
        v = match v {
            Value::Map(mut m) => m.remove(f).unwrap_or(Value::Nil),
            Value::List(l) if f == "Firing" || f == "Resolved" => {
                let want = if f == "Firing" { "firing" } else { "resolved" };
                Value::List(
                    l.into_iter()
                        .filter(|a| matches!(a, Value::Map(m) if m.get("Status") == Some(&Value::Str(want.into()))))
                        .collect(),
                )
            }
            Value::Nil => Value::Nil,
            other => {
                return Err(format!(
                    "can't evaluate field {f} in type {}",
                    other.type_name()
                ));
            }
        };
    }
    Ok(v)
}

impl Exec<'_> {
    fn var(&self, name: &str) -> Value {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or(Value::Nil)
    }

    fn nodes(&mut self, nodes: &[Node], dot: &Value, out: &mut String) -> Result<(), String> {
        for n in nodes {
            self.steps += 1;
            if self.steps > MAX_STEPS || out.len() > MAX_OUTPUT {
                return Err("template too expensive (step or output limit)".into());
            }
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => {
                    let v = self.pipe(p, dot)?;
                    if p.decl.is_none() {
                        v.render(out);
                    }
                }
                Node::If(p, then, els) => {
                    let mark = self.vars.len();
                    let c = self.pipe(p, dot)?;
                    if c.truthy() {
                        self.nodes(then, dot, out)?;
                    } else {
                        self.nodes(els, dot, out)?;
                    }
                    self.vars.truncate(mark);
                }
                Node::With(p, then, els) => {
                    let mark = self.vars.len();
                    let c = self.pipe(p, dot)?;
                    if c.truthy() {
                        self.nodes(then, &c, out)?;
                    } else {
                        self.nodes(els, dot, out)?;
                    }
                    self.vars.truncate(mark);
                }
                Node::Range(bind, p, body, els) => {
                    let mark = self.vars.len();
                    let c = self.pipe(p, dot)?;
                    let items: Vec<(Value, Value)> = match c {
                        Value::List(l) => l
                            .into_iter()
                            .enumerate()
                            .map(|(i, v)| (Value::Num(i as f64), v))
                            .collect(),
                        Value::Map(m) => m.into_iter().map(|(k, v)| (Value::Str(k), v)).collect(),
                        Value::Nil => Vec::new(),
                        Value::Num(n) if n >= 0.0 => (0..n as usize)
                            .map(|i| (Value::Num(i as f64), Value::Num(i as f64)))
                            .collect(),
                        other => {
                            return Err(format!("range can't iterate over {}", other.type_name()));
                        }
                    };
                    if items.is_empty() {
                        self.nodes(els, dot, out)?;
                    }
                    for (k, v) in items {
                        let inner = self.vars.len();
                        match bind {
                            Some((a, Some(b))) => {
                                self.vars.push((a.clone(), k));
                                self.vars.push((b.clone(), v.clone()));
                            }
                            Some((a, None)) => self.vars.push((a.clone(), v.clone())),
                            None => {}
                        }
                        self.nodes(body, &v, out)?;
                        self.vars.truncate(inner);
                    }
                    self.vars.truncate(mark);
                }
            }
        }
        Ok(())
    }

    fn pipe(&mut self, p: &Pipe, dot: &Value) -> Result<Value, String> {
        let mut prev: Option<Value> = None;
        for cmd in &p.cmds {
            prev = Some(self.cmd(cmd, dot, prev)?);
        }
        let v = prev.unwrap_or(Value::Nil);
        if let Some((name, is_decl)) = &p.decl {
            if *is_decl {
                self.vars.push((name.clone(), v.clone()));
            } else if let Some(slot) = self.vars.iter_mut().rev().find(|(k, _)| k == name) {
                slot.1 = v.clone();
            }
        }
        Ok(v)
    }

    fn arg(&mut self, a: &Arg, dot: &Value) -> Result<Value, String> {
        Ok(match a {
            Arg::Dot(f) => field(dot.clone(), f)?,
            Arg::Var(v, f) => field(self.var(v), f)?,
            Arg::Str(s) => Value::Str(s.clone()),
            Arg::Num(n) => Value::Num(*n),
            Arg::Bool(b) => Value::Bool(*b),
            Arg::Nil => Value::Nil,
            Arg::Func(name) => self.call(name, Vec::new())?,
            Arg::Sub(p, f) => {
                let v = self.pipe(p, dot)?;
                field(v, f)?
            }
        })
    }

    fn cmd(&mut self, cmd: &[Arg], dot: &Value, prev: Option<Value>) -> Result<Value, String> {
        match &cmd[0] {
            Arg::Func(name) => {
                let mut args = Vec::with_capacity(cmd.len());
                for a in &cmd[1..] {
                    args.push(self.arg(a, dot)?);
                }
                if let Some(p) = prev {
                    args.push(p);
                }
                self.call(name, args)
            }
            a => {
                if prev.is_some() {
                    return Err("can't give argument to non-function".into());
                }
                self.arg(a, dot)
            }
        }
    }

    fn call(&mut self, name: &str, args: Vec<Value>) -> Result<Value, String> {
        let n = args.len();
        let want = |k: usize| -> Result<(), String> {
            if n == k {
                Ok(())
            } else {
                Err(format!("wrong number of args for {name}: want {k} got {n}"))
            }
        };
        let num = |i: usize| args[i].as_num();
        Ok(match name {
            "humanize" => {
                want(1)?;
                Value::Str(humanize(num(0)?, 1000.0, false))
            }
            "humanize1024" => {
                want(1)?;
                Value::Str(humanize(num(0)?, 1024.0, true))
            }
            "humanizePercentage" => {
                want(1)?;
                Value::Str(format!("{}%", fmt_g(num(0)? * 100.0, 4)))
            }
            "humanizeDuration" => {
                want(1)?;
                Value::Str(humanize_duration(num(0)?))
            }
            "humanizeTimestamp" => {
                want(1)?;
                Value::Str(format_timestamp(num(0)?))
            }
            "toTime" => {
                want(1)?;
                Value::Str(format_timestamp(num(0)?))
            }
            "printf" => {
                if n == 0 {
                    return Err("wrong number of args for printf: want at least 1".into());
                }
                Value::Str(sprintf(&args[0].as_str(), &args[1..]))
            }
            "print" => Value::Str(args.iter().map(Value::as_str).collect::<Vec<_>>().join(" ")),
            "println" => {
                Value::Str(args.iter().map(Value::as_str).collect::<Vec<_>>().join(" ") + "\n")
            }
            "toUpper" => {
                want(1)?;
                Value::Str(args[0].as_str().to_uppercase())
            }
            "toLower" => {
                want(1)?;
                Value::Str(args[0].as_str().to_lowercase())
            }
            "trimSpace" => {
                want(1)?;
                Value::Str(args[0].as_str().trim().to_string())
            }
            "title" => {
                want(1)?;
                let s = args[0].as_str();
                let mut out = String::with_capacity(s.len());
                let mut start = true;
                for c in s.chars() {
                    if start && c.is_alphabetic() {
                        out.extend(c.to_uppercase());
                    } else {
                        out.push(c);
                    }
                    start = !c.is_alphanumeric() && c != '\'';
                }
                Value::Str(out)
            }
            "reReplaceAll" => {
                want(3)?;
                let re = regex::Regex::new(&args[0].as_str()).map_err(|e| e.to_string())?;
                let repl = args[1].as_str();
                Value::Str(
                    re.replace_all(&args[2].as_str(), repl.as_str())
                        .into_owned(),
                )
            }
            "match" => {
                want(2)?;
                let re = regex::Regex::new(&args[0].as_str()).map_err(|e| e.to_string())?;
                Value::Bool(re.is_match(&args[1].as_str()))
            }
            "safeHtml" | "strvalue" => {
                want(1)?;
                Value::Str(args[0].as_str())
            }
            "html" => {
                want(1)?;
                Value::Str(
                    args[0]
                        .as_str()
                        .replace('&', "&amp;")
                        .replace('<', "&lt;")
                        .replace('>', "&gt;")
                        .replace('"', "&#34;")
                        .replace('\'', "&#39;"),
                )
            }
            "js" => {
                want(1)?;
                Value::Str(
                    args[0]
                        .as_str()
                        .replace('\\', "\\\\")
                        .replace('\'', "\\'")
                        .replace('"', "\\\""),
                )
            }
            "urlquery" => {
                want(1)?;
                let s = args[0].as_str();
                let mut out = String::new();
                for b in s.bytes() {
                    if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                        out.push(b as char);
                    } else if b == b' ' {
                        out.push('+');
                    } else {
                        let _ = write!(out, "%{b:02X}");
                    }
                }
                Value::Str(out)
            }
            "stripPort" => {
                want(1)?;
                let s = args[0].as_str();
                let host = if let Some(r) = s.strip_prefix('[') {
                    r.split(']').next().unwrap_or(r).to_string()
                } else if s.matches(':').count() == 1 {
                    s.split(':').next().unwrap_or(&s).to_string()
                } else {
                    s.clone()
                };
                Value::Str(host)
            }
            "stripDomain" => {
                want(1)?;
                let s = args[0].as_str();
                let (host, port) = match s.rsplit_once(':') {
                    Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p.to_string())),
                    _ => (s.clone(), None),
                };
                let short = host.split('.').next().unwrap_or(&host).to_string();
                Value::Str(match port {
                    Some(p) => format!("{short}:{p}"),
                    None => short,
                })
            }
            "first" => {
                want(1)?;
                match &args[0] {
                    Value::List(l) => l
                        .first()
                        .cloned()
                        .ok_or("first() called on vector with no elements")?,
                    _ => return Err("first() needs a query result".into()),
                }
            }
            "label" => {
                want(2)?;
                field(args[1].clone(), &["Labels".to_string(), args[0].as_str()])?
                    .pipe_nil_to_empty()
            }
            "value" => {
                want(1)?;
                field(args[0].clone(), &["Value".to_string()])?
            }
            "sortByLabel" => {
                want(2)?;
                let key = args[0].as_str();
                let Value::List(mut l) = args[1].clone() else {
                    return Err("sortByLabel needs a query result".into());
                };
                l.sort_by_key(|s| {
                    field(s.clone(), &["Labels".to_string(), key.clone()])
                        .map(|v| v.as_str())
                        .unwrap_or_default()
                });
                Value::List(l)
            }
            "query" => {
                want(1)?;
                match self.query {
                    Some(q) => Value::List(q(&args[0].as_str())?),
                    None => Value::List(Vec::new()),
                }
            }
            "len" => {
                want(1)?;
                Value::Num(match &args[0] {
                    Value::Str(s) => s.len(),
                    Value::List(l) => l.len(),
                    Value::Map(m) => m.len(),
                    other => return Err(format!("len of {}", other.type_name())),
                } as f64)
            }
            "index" => {
                if n < 1 {
                    return Err("wrong number of args for index".into());
                }
                let mut v = args[0].clone();
                for k in &args[1..] {
                    v = match (v, k) {
                        (Value::Map(mut m), k) => m.remove(&k.as_str()).unwrap_or(Value::Nil),
                        (Value::List(l), k) => {
                            let i = k.as_num()? as usize;
                            l.get(i)
                                .cloned()
                                .ok_or_else(|| format!("index out of range: {i}"))?
                        }
                        (Value::Nil, _) => Value::Nil,
                        (other, _) => {
                            return Err(format!("can't index item of type {}", other.type_name()));
                        }
                    };
                }
                v
            }
            "eq" | "ne" | "lt" | "le" | "gt" | "ge" => {
                if n < 2 {
                    return Err(format!("wrong number of args for {name}"));
                }
                let cmp = |a: &Value, b: &Value| -> Result<std::cmp::Ordering, String> {
                    match (a, b) {
                        (Value::Num(x), Value::Num(y)) => {
                            x.partial_cmp(y).ok_or_else(|| "NaN comparison".to_string())
                        }
                        (Value::Str(x), Value::Str(y)) => Ok(x.cmp(y)),
                        (Value::Bool(x), Value::Bool(y)) if matches!(name, "eq" | "ne") => {
                            Ok(x.cmp(y))
                        }
                        _ => Err(format!(
                            "incompatible types for comparison: {} and {}",
                            a.type_name(),
                            b.type_name()
                        )),
                    }
                };
                use std::cmp::Ordering::*;
                if name == "eq" {
                    let mut any = false;
                    for b in &args[1..] {
                        any |= cmp(&args[0], b)? == Equal;
                    }
                    Value::Bool(any)
                } else {
                    want(2)?;
                    let o = cmp(&args[0], &args[1])?;
                    Value::Bool(match name {
                        "ne" => o != Equal,
                        "lt" => o == Less,
                        "le" => o != Greater,
                        "gt" => o == Greater,
                        _ => o != Less,
                    })
                }
            }
            "and" => {
                if n == 0 {
                    return Err("wrong number of args for and".into());
                }
                args.iter()
                    .find(|a| !a.truthy())
                    .unwrap_or(&args[n - 1])
                    .clone()
            }
            "or" => {
                if n == 0 {
                    return Err("wrong number of args for or".into());
                }
                args.iter()
                    .find(|a| a.truthy())
                    .unwrap_or(&args[n - 1])
                    .clone()
            }
            "not" => {
                want(1)?;
                Value::Bool(!args[0].truthy())
            }
            "parseDuration" => {
                want(1)?;
                let ms = crate::duration::parse_duration(&args[0].as_str())?;
                Value::Num(ms as f64 / 1000.0)
            }
            "externalURL" | "pathPrefix" => Value::Str(String::new()),
            "args" => Value::Map(
                args.into_iter()
                    .enumerate()
                    .map(|(i, v)| (format!("arg{i}"), v))
                    .collect(),
            ),
            "join" => {
                want(2)?;
                let sep = args[0].as_str();
                match &args[1] {
                    Value::List(l) => {
                        Value::Str(l.iter().map(Value::as_str).collect::<Vec<_>>().join(&sep))
                    }
                    other => return Err(format!("join needs a list, got {}", other.type_name())),
                }
            }
            "stringSlice" => Value::List(args),
            "toJson" => {
                want(1)?;
                Value::Str(to_json(&args[0]).to_string())
            }
            other => return Err(format!("function {other:?} not defined")),
        })
    }
}

trait NilToEmpty {
    fn pipe_nil_to_empty(self) -> Value;
}

impl NilToEmpty for Value {
    fn pipe_nil_to_empty(self) -> Value {
        if self == Value::Nil {
            Value::Str(String::new())
        } else {
            self
        }
    }
}

fn to_json(v: &Value) -> serde_json::Value {
    match v {
        Value::Nil => serde_json::Value::Null,
        Value::Bool(b) => (*b).into(),
        Value::Num(n) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Value::Str(s) => s.clone().into(),
        Value::Map(m) => m.iter().map(|(k, v)| (k.clone(), to_json(v))).collect(),
        Value::List(l) => l.iter().map(to_json).collect(),
    }
}

/// Prometheus' `humanize` (SI prefixes) and `humanize1024` (binary prefixes).
pub fn humanize(v: f64, base: f64, binary: bool) -> String {
    if v == 0.0 || v.is_nan() || v.is_infinite() {
        return fmt_g(v, 4);
    }
    if v.abs() >= 1.0 {
        let prefixes: &[&str] = if binary {
            &["", "ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"]
        } else {
            &["", "k", "M", "G", "T", "P", "E", "Z", "Y"]
        };
        let mut x = v;
        let mut i = 0;
        while x.abs() >= base && i + 1 < prefixes.len() {
            x /= base;
            i += 1;
        }
        return format!("{}{}", fmt_g(x, 4), prefixes[i]);
    }
    if binary {
        return fmt_g(v, 4);
    }
    let prefixes = ["", "m", "u", "n", "p", "f", "a", "z", "y"];
    let mut x = v;
    let mut i = 0;
    while x.abs() < 1.0 && i + 1 < prefixes.len() {
        x *= 1000.0;
        i += 1;
    }
    format!("{}{}", fmt_g(x, 4), prefixes[i])
}

/// Prometheus' `humanizeDuration` (seconds in, `1d 2h 3m 4s` out).
pub fn humanize_duration(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return fmt_g(v, 4);
    }
    if v == 0.0 {
        return "0s".into();
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 { "-" } else { "" };
        let a = v.abs();
        let total = a as i64;
        let (d, h, m, s) = (
            total / 86_400,
            total / 3600 % 24,
            total / 60 % 60,
            total % 60,
        );
        return if d != 0 {
            format!("{sign}{d}d {h}h {m}m {s}s")
        } else if h != 0 {
            format!("{sign}{h}h {m}m {s}s")
        } else if m != 0 {
            format!("{sign}{m}m {s}s")
        } else {
            format!("{sign}{}s", fmt_g(a, 4))
        };
    }
    let mut x = v;
    let mut i = 0;
    let prefixes = ["", "m", "u", "n", "p", "f", "a", "z", "y"];
    while x.abs() < 1.0 && i + 1 < prefixes.len() {
        x *= 1000.0;
        i += 1;
    }
    format!("{}{}s", fmt_g(x, 4), prefixes[i])
}

/// A Unix time in seconds as `2006-01-02 15:04:05.999 +0000 UTC`.
pub fn format_timestamp(secs: f64) -> String {
    if !secs.is_finite() {
        return fmt_g(secs, 4);
    }
    let whole = secs.floor() as i64;
    let nanos = ((secs - secs.floor()) * 1e9).round() as i64;
    let (y, mo, d) = civil_from_days(whole.div_euclid(86_400));
    let sod = whole.rem_euclid(86_400);
    let mut s = format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if nanos > 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Go's `fmt.Sprintf` for the verbs templates use: `%s %v %d %f %e %g %q %x %%` with flags,
/// width and precision.
pub fn sprintf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut it = format.chars().peekable();
    let mut ai = 0;
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = it.peek() {
            if "+-# 0".contains(f) {
                flags.push(f);
                it.next();
            } else {
                break;
            }
        }
        let mut width = String::new();
        while let Some(&d) = it.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            it.next();
        }
        let mut prec: Option<usize> = None;
        if it.peek() == Some(&'.') {
            it.next();
            let mut p = String::new();
            while let Some(&d) = it.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                it.next();
            }
            prec = Some(p.parse().unwrap_or(0));
        }
        let Some(verb) = it.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(ai) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        ai += 1;
        let body = match verb {
            's' | 'v' => {
                let s = arg.as_str();
                match prec {
                    Some(p) => s.chars().take(p).collect(),
                    None => s,
                }
            }
            'q' => format!("{:?}", arg.as_str()),
            'd' => match arg.as_num() {
                Ok(n) => {
                    let s = format!("{}", n.trunc() as i64);
                    if flags.contains('+') && n >= 0.0 {
                        format!("+{s}")
                    } else {
                        s
                    }
                }
                Err(_) => format!("%!d({})", arg.as_str()),
            },
            'f' | 'F' => match arg.as_num() {
                Ok(n) => {
                    let s = format!("{:.*}", prec.unwrap_or(6), n);
                    if flags.contains('+') && n >= 0.0 {
                        format!("+{s}")
                    } else {
                        s
                    }
                }
                Err(_) => format!("%!f({})", arg.as_str()),
            },
            'e' => match arg.as_num() {
                Ok(n) => {
                    let s = format!("{:.*e}", prec.unwrap_or(6), n);
                    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
                    let e: i32 = e.parse().unwrap_or(0);
                    format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
                }
                Err(_) => format!("%!e({})", arg.as_str()),
            },
            'g' => match arg.as_num() {
                Ok(n) => match prec {
                    Some(p) => fmt_g(n, p),
                    None => go_number(n),
                },
                Err(_) => format!("%!g({})", arg.as_str()),
            },
            'x' => match arg {
                Value::Num(n) => format!("{:x}", *n as i64),
                other => other.as_str().bytes().map(|b| format!("{b:02x}")).collect(),
            },
            't' => arg.as_str(),
            other => format!("%!{other}({})", arg.as_str()),
        };
        let w: usize = width.parse().unwrap_or(0);
        let len = body.chars().count();
        if len < w {
            let pad = w - len;
            if flags.contains('-') {
                out.push_str(&body);
                out.extend(std::iter::repeat_n(' ', pad));
            } else if flags.contains('0') && verb != 's' {
                let (sign, digits) = match body.strip_prefix('-') {
                    Some(d) => ("-", d),
                    None => ("", body.as_str()),
                };
                out.push_str(sign);
                out.extend(std::iter::repeat_n('0', pad));
                out.push_str(digits);
            } else {
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(&body);
            }
        } else {
            out.push_str(&body);
        }
    }
    if ai < args.len() {
        out.push_str("%!(EXTRA ");
        let extra: Vec<String> = args[ai..].iter().map(Value::as_str).collect();
        out.push_str(&extra.join(", "));
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALERT_VARS: &[&str] = &["$labels", "$value", "$externalLabels", "$externalURL"];

    fn run(src: &str, labels: &[(&str, &str)], value: f64) -> String {
        let t = Template::parse("t", src, ALERT_VARS).unwrap();
        let l = Value::str_map(labels.iter().copied());
        let dot = Value::Map(
            [
                ("Labels".to_string(), l.clone()),
                ("Value".to_string(), Value::Num(value)),
            ]
            .into_iter()
            .collect(),
        );
        t.execute(
            &dot,
            &[
                ("$labels", l),
                ("$value", Value::Num(value)),
                ("$externalLabels", Value::Map(BTreeMap::new())),
                ("$externalURL", Value::Str(String::new())),
            ],
            None,
        )
        .unwrap()
    }

    #[test]
    fn annotations_as_rule_files_write_them() {
        let l = [("instance", "db-1:9100"), ("job", "node")];
        assert_eq!(
            run("{{ $labels.instance }} is down", &l, 0.0),
            "db-1:9100 is down"
        );
        assert_eq!(run("{{ $value | humanize }}", &l, 1234567.0), "1.235M");
        assert_eq!(
            run("{{ $value | humanizePercentage }}", &l, 0.1234),
            "12.34%"
        );
        assert_eq!(run("{{ printf \"%.2f\" $value }}", &l, 1.23456), "1.23");
        assert_eq!(run("{{ humanize1024 $value }}", &l, 2048.0), "2ki");
        assert_eq!(
            run("{{ $value | humanizeDuration }}", &l, 90061.0),
            "1d 1h 1m 1s"
        );
        assert_eq!(run("{{ $value | humanizeDuration }}", &l, 0.25), "250ms");
        assert_eq!(run("{{ .Labels.job | toUpper }}", &l, 0.0), "NODE");
        assert_eq!(run("{{ $labels.instance | stripPort }}", &l, 0.0), "db-1");
        assert_eq!(
            run("{{ if gt $value 80.0 }}high{{ else }}ok{{ end }}", &l, 90.0),
            "high"
        );
        assert_eq!(run("{{- /* c */ -}}  x  {{- $value -}} ", &l, 5.0), "x5");
        assert_eq!(run("{{ $x := \"a\" }}{{ $x }}", &l, 0.0), "a");
        assert_eq!(
            run(
                "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}",
                &l,
                0.0
            ),
            "instance=db-1:9100;job=node;"
        );
        assert_eq!(run("{{ $labels.missing }}", &l, 0.0), "<no value>");
        assert_eq!(run("{{ humanize 0.0012 }}", &l, 0.0), "1.2m");
        assert_eq!(run("{{ $value }}", &l, 0.5), "0.5");
        assert_eq!(
            run(
                "{{ reReplaceAll \"(.*):.*\" \"$1\" $labels.instance }}",
                &l,
                0.0
            ),
            "db-1"
        );
    }

    #[test]
    fn parse_errors_name_the_problem() {
        for (src, want) in [
            ("{{ $labels.x ", "unclosed action"),
            ("{{ nosuchfn $value }}", "not defined"),
            ("{{ $undefined }}", "undefined variable"),
            ("{{ if $value }}x", "unexpected EOF"),
            ("{{ end }}", "unexpected {{end}}"),
            ("{{ \"a }}", "unclosed"),
            ("{{ printf \"\\q\" }}", "unknown escape"),
        ] {
            let e = Template::parse("t", src, ALERT_VARS).unwrap_err();
            assert!(e.message.contains(want), "{src}: {e}");
        }
    }

    #[test]
    fn go_formatting() {
        assert_eq!(fmt_g(1234567.0, 4), "1.235e+06");
        assert_eq!(fmt_g(0.0001234, 4), "0.0001234");
        assert_eq!(fmt_g(100.0, 4), "100");
        assert_eq!(
            sprintf(
                "%5.1f|%-4s|%03d|%%",
                &[
                    Value::Num(1.23456),
                    Value::Str("ab".into()),
                    Value::Num(7.0)
                ]
            ),
            "  1.2|ab  |007|%"
        );
        assert_eq!(format_timestamp(0.0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            format_timestamp(1_700_000_000.5),
            "2023-11-14 22:13:20.5 +0000 UTC"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(src in "[{}$a-z .|\"()-]{0,40}") {
            if let Ok(t) = Template::parse("p", &src, ALERT_VARS) {
                let _ = t.execute(&Value::Nil, &[], None);
            }
        }
    }
}
