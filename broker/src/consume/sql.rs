//! SQL92 filter expressions over message properties, as RocketMQ defines them.
//!
//! Grammar (keywords in any case): comparisons `=`, `<>` (or `!=`), `>`, `>=`, `<`, `<=`;
//! `x [NOT] BETWEEN a AND b`; `x [NOT] IN ('a', 'b')` (strings); `x IS [NOT] NULL`;
//! `AND`, `OR`, `NOT`, parentheses; literals: numbers (`10`, `-2.5`), strings in single quotes
//! (`'it''s'`), `TRUE`, `FALSE`, `NULL`; any other word names a user property, and `TAGS` names
//! the message's tag.
//!
//! Evaluation is three-valued, as in SQL: a property the message does not have is NULL, any
//! comparison with NULL is unknown, and only a *true* expression matches; so a filter on an
//! unknown property matches nothing (as RocketMQ's broker does). A property compared with a
//! number is read as a number (a value that is not one makes the comparison unknown); compared
//! with TRUE or FALSE, as a boolean. Strings are compared for equality only.
//!
//! An expression is parsed once per subscription into a tree; evaluating it borrows the
//! message's property values and allocates nothing.
//!
//! Limits, as any client may send one: an expression is at most [`MAX_TEXT`] bytes and nests
//! parentheses and `NOT` at most [`MAX_NESTING`] deep. A run of `AND`s (or `OR`s) becomes a
//! balanced tree, so parsing, evaluating and dropping a tree never recurse deeper than a few
//! hundred calls, whatever the text.

use std::collections::BTreeMap;
use std::fmt;

/// Longest expression accepted, in bytes.
pub const MAX_TEXT: usize = 8 * 1024;

/// Deepest nesting of parentheses and `NOT` accepted.
pub const MAX_NESTING: usize = 64;

/// Why an expression does not parse: where (a character offset) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// An operand: a literal or a property.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Property(String),
    Str(String),
    Num(f64),
    Bool(bool),
    Null,
}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare(Operand, Op, Operand),
    Between {
        value: Operand,
        low: Operand,
        high: Operand,
        negated: bool,
    },
    In {
        value: Operand,
        set: Vec<String>,
        negated: bool,
    },
    IsNull {
        value: Operand,
        negated: bool,
    },
    /// A lone operand used as a condition (`TRUE`, or a property holding "true").
    Value(Operand),
}

/// A compiled filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Sql {
    expr: Expr,
}

/// The properties a filter reads: the message's user properties and its tag.
pub struct Props<'a> {
    pub tag: Option<&'a str>,
    pub user: &'a BTreeMap<String, String>,
}

impl<'a> Props<'a> {
    fn get(&self, name: &str) -> Option<&'a str> {
        if name == "TAGS" {
            return self.tag;
        }
        self.user.get(name).map(String::as_str)
    }
}

impl Sql {
    pub fn parse(text: &str) -> Result<Sql, SqlError> {
        if text.len() > MAX_TEXT {
            let message = format!("the expression is {} bytes long; at most {MAX_TEXT} are accepted", text.len());
            return Err(SqlError { position: 0, message });
        }
        let tokens = lex(text)?;
        let mut p = Parser { tokens, at: 0, end: text.chars().count(), depth: 0 };
        let expr = p.or()?;
        if let Some(t) = p.tokens.get(p.at) {
            return Err(SqlError { position: t.pos, message: format!("unexpected {}", t.kind) });
        }
        Ok(Sql { expr })
    }

    /// Whether the message matches: the expression is true (not false, not unknown).
    pub fn matches(&self, props: &Props<'_>) -> bool {
        eval(&self.expr, props) == Some(true)
    }

    pub fn expr(&self) -> &Expr {
        &self.expr
    }
}

/// A value during evaluation, borrowed from the message or the expression.
#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Null,
    Str(&'a str),
    Num(f64),
    Bool(bool),
}

fn value<'a>(o: &'a Operand, props: &Props<'a>) -> Val<'a> {
    match o {
        Operand::Property(name) => props.get(name).map_or(Val::Null, Val::Str),
        Operand::Str(s) => Val::Str(s),
        Operand::Num(n) => Val::Num(*n),
        Operand::Bool(b) => Val::Bool(*b),
        Operand::Null => Val::Null,
    }
}

fn as_number(v: Val<'_>) -> Option<f64> {
    match v {
        Val::Num(n) => Some(n),
        Val::Str(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

fn as_bool(v: Val<'_>) -> Option<bool> {
    match v {
        Val::Bool(b) => Some(b),
        Val::Str(s) if s.eq_ignore_ascii_case("true") => Some(true),
        Val::Str(s) if s.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// `a op b`, or unknown (`None`).
fn compare(a: Val<'_>, op: Op, b: Val<'_>) -> Option<bool> {
    let ordering = match (a, b) {
        (Val::Null, _) | (_, Val::Null) => return None,
        (Val::Num(_), _) | (_, Val::Num(_)) => as_number(a)?.partial_cmp(&as_number(b)?)?,
        (Val::Bool(_), _) | (_, Val::Bool(_)) => as_bool(a)?.cmp(&as_bool(b)?),
        (Val::Str(x), Val::Str(y)) => {
            return match op {
                Op::Eq => Some(x == y),
                Op::Ne => Some(x != y),
                _ => None,
            }
        }
    };
    use std::cmp::Ordering::*;
    Some(match op {
        Op::Eq => ordering == Equal,
        Op::Ne => ordering != Equal,
        Op::Gt => ordering == Greater,
        Op::Ge => ordering != Less,
        Op::Lt => ordering == Less,
        Op::Le => ordering != Greater,
    })
}

fn and(a: Option<bool>, b: impl FnOnce() -> Option<bool>) -> Option<bool> {
    match a {
        Some(false) => Some(false),
        Some(true) => b(),
        None => match b() {
            Some(false) => Some(false),
            _ => None,
        },
    }
}

fn or(a: Option<bool>, b: impl FnOnce() -> Option<bool>) -> Option<bool> {
    match a {
        Some(true) => Some(true),
        Some(false) => b(),
        None => match b() {
            Some(true) => Some(true),
            _ => None,
        },
    }
}

fn eval(e: &Expr, props: &Props<'_>) -> Option<bool> {
    match e {
        Expr::And(a, b) => and(eval(a, props), || eval(b, props)),
        Expr::Or(a, b) => or(eval(a, props), || eval(b, props)),
        Expr::Not(a) => eval(a, props).map(|x| !x),
        Expr::Compare(a, op, b) => compare(value(a, props), *op, value(b, props)),
        Expr::Between { value: v, low, high, negated } => {
            let v = value(v, props);
            let within = and(compare(v, Op::Ge, value(low, props)), || compare(v, Op::Le, value(high, props)));
            within.map(|w| w != *negated)
        }
        Expr::In { value: v, set, negated } => match value(v, props) {
            Val::Str(s) => Some(set.iter().any(|x| x == s) != *negated),
            _ => None,
        },
        Expr::IsNull { value: v, negated } => Some(matches!(value(v, props), Val::Null) != *negated),
        Expr::Value(o) => as_bool(value(o, props)),
    }
}

// ---- lexing ----

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Word(String),
    Str(String),
    Num(f64),
    Op(Op),
    LParen,
    RParen,
    Comma,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Word(w) => write!(f, "{w:?}"),
            Kind::Str(s) => write!(f, "string '{s}'"),
            Kind::Num(n) => write!(f, "number {n}"),
            Kind::Op(op) => write!(f, "operator {op:?}"),
            Kind::LParen => f.write_str("'('"),
            Kind::RParen => f.write_str("')'"),
            Kind::Comma => f.write_str("','"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Kind,
    pos: usize,
}

fn lex(text: &str) -> Result<Vec<Token>, SqlError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |pos: usize, m: &str| SqlError { position: pos, message: m.to_string() };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let kind = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => Kind::LParen,
            ')' => Kind::RParen,
            ',' => Kind::Comma,
            '=' => Kind::Op(Op::Eq),
            '<' | '>' | '!' => {
                let next = chars.get(i + 1).copied();
                let (op, len) = match (c, next) {
                    ('<', Some('>')) | ('!', Some('=')) => (Op::Ne, 2),
                    ('<', Some('=')) => (Op::Le, 2),
                    ('>', Some('=')) => (Op::Ge, 2),
                    ('<', _) => (Op::Lt, 1),
                    ('>', _) => (Op::Gt, 1),
                    _ => return Err(err(i, "'!' must be followed by '='")),
                };
                i += len;
                out.push(Token { kind: Kind::Op(op), pos: start });
                continue;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(start, "unterminated string")),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => break,
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push(Token { kind: Kind::Str(s), pos: start });
                continue;
            }
            c if c.is_ascii_digit()
                || (c == '-' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit() || *d == '.'))
                || c == '.' =>
            {
                i += 1;
                while i < chars.len()
                    && (chars[i].is_ascii_digit() || chars[i] == '.' || chars[i] == 'e' || chars[i] == 'E')
                {
                    i += 1;
                }
                let literal: String = chars[start..i].iter().collect();
                let n = literal.parse::<f64>().map_err(|_| err(start, &format!("{literal:?} is not a number")))?;
                out.push(Token { kind: Kind::Num(n), pos: start });
                continue;
            }
            c if c.is_alphabetic() || c == '_' || c == '$' => {
                while i < chars.len() && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '$' | '.')) {
                    i += 1;
                }
                out.push(Token { kind: Kind::Word(chars[start..i].iter().collect()), pos: start });
                continue;
            }
            other => return Err(err(i, &format!("unexpected character {other:?}"))),
        };
        out.push(Token { kind, pos: start });
        i += 1;
    }
    Ok(out)
}

// ---- parsing (recursive descent: OR < AND < NOT < predicate) ----

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    /// Position of the end of the text, for "expected … at the end" errors.
    end: usize,
    /// Parentheses and `NOT`s open around the current token.
    depth: usize,
}

/// `items` (at least one) joined by `join` into a balanced tree, in their order.
fn balanced(mut items: Vec<Expr>, join: fn(Box<Expr>, Box<Expr>) -> Expr) -> Expr {
    if items.len() == 1 {
        return items.pop().unwrap_or(Expr::Value(Operand::Null));
    }
    let right = items.split_off(items.len() / 2);
    join(Box::new(balanced(items, join)), Box::new(balanced(right, join)))
}

impl Parser {
    fn peek(&self) -> Option<&Kind> {
        self.tokens.get(self.at).map(|t| &t.kind)
    }

    fn pos(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end, |t| t.pos)
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, SqlError> {
        Err(SqlError { position: self.pos(), message: message.into() })
    }

    fn keyword(&mut self, k: &str) -> bool {
        if matches!(self.peek(), Some(Kind::Word(w)) if w.eq_ignore_ascii_case(k)) {
            self.at += 1;
            return true;
        }
        false
    }

    fn expect_keyword(&mut self, k: &str) -> Result<(), SqlError> {
        if self.keyword(k) {
            return Ok(());
        }
        self.fail(format!("expected {k}"))
    }

    fn or(&mut self) -> Result<Expr, SqlError> {
        let mut terms = vec![self.and()?];
        while self.keyword("OR") {
            terms.push(self.and()?);
        }
        Ok(balanced(terms, Expr::Or))
    }

    fn and(&mut self) -> Result<Expr, SqlError> {
        let mut terms = vec![self.not()?];
        while self.keyword("AND") {
            terms.push(self.not()?);
        }
        Ok(balanced(terms, Expr::And))
    }

    /// Enters one more level of nesting, refused past [`MAX_NESTING`].
    fn nest(&mut self) -> Result<(), SqlError> {
        if self.depth >= MAX_NESTING {
            return self.fail(format!("parentheses and NOT nest more than {MAX_NESTING} deep"));
        }
        self.depth += 1;
        Ok(())
    }

    fn not(&mut self) -> Result<Expr, SqlError> {
        if self.keyword("NOT") {
            self.nest()?;
            let e = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, SqlError> {
        if self.peek() == Some(&Kind::LParen) {
            self.nest()?;
            self.at += 1;
            let e = self.or()?;
            if self.peek() != Some(&Kind::RParen) {
                return self.fail("expected ')'");
            }
            self.at += 1;
            self.depth -= 1;
            return Ok(e);
        }
        let left = self.operand()?;
        if let Some(Kind::Op(op)) = self.peek() {
            let op = *op;
            self.at += 1;
            return Ok(Expr::Compare(left, op, self.operand()?));
        }
        if self.keyword("IS") {
            let negated = self.keyword("NOT");
            self.expect_keyword("NULL")?;
            return Ok(Expr::IsNull { value: left, negated });
        }
        let negated = self.keyword("NOT");
        if self.keyword("BETWEEN") {
            let low = self.operand()?;
            self.expect_keyword("AND")?;
            let high = self.operand()?;
            return Ok(Expr::Between { value: left, low, high, negated });
        }
        if self.keyword("IN") {
            return Ok(Expr::In { value: left, set: self.string_list()?, negated });
        }
        if negated {
            return self.fail("expected BETWEEN or IN after NOT");
        }
        Ok(Expr::Value(left))
    }

    fn string_list(&mut self) -> Result<Vec<String>, SqlError> {
        if self.peek() != Some(&Kind::LParen) {
            return self.fail("expected '(' after IN");
        }
        self.at += 1;
        let mut set = Vec::new();
        loop {
            match self.peek().cloned() {
                Some(Kind::Str(s)) => {
                    self.at += 1;
                    set.push(s);
                }
                _ => return self.fail("IN takes a list of strings in single quotes"),
            }
            match self.peek() {
                Some(Kind::Comma) => self.at += 1,
                Some(Kind::RParen) => {
                    self.at += 1;
                    return Ok(set);
                }
                _ => return self.fail("expected ',' or ')' in the IN list"),
            }
        }
    }

    fn operand(&mut self) -> Result<Operand, SqlError> {
        let Some(kind) = self.peek().cloned() else { return self.fail("expected a value at the end") };
        let o = match kind {
            Kind::Str(s) => Operand::Str(s),
            Kind::Num(n) => Operand::Num(n),
            Kind::Word(w) => match w.to_ascii_uppercase().as_str() {
                "TRUE" => Operand::Bool(true),
                "FALSE" => Operand::Bool(false),
                "NULL" => Operand::Null,
                "AND" | "OR" | "NOT" | "BETWEEN" | "IN" | "IS" => {
                    return self.fail(format!("expected a value, found the keyword {w}"))
                }
                _ => Operand::Property(w),
            },
            other => return self.fail(format!("expected a value, found {other}")),
        };
        self.at += 1;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn matches(expr: &str, tag: Option<&str>, pairs: &[(&str, &str)]) -> bool {
        let user = props(pairs);
        Sql::parse(expr).unwrap().matches(&Props { tag, user: &user })
    }

    #[test]
    fn rocketmq_examples_select_what_they_say() {
        let m = [("a", "50"), ("b", "true"), ("region", "eu")];
        assert!(matches("(a > 10 AND a < 100) OR (b IS NOT NULL AND b = TRUE)", None, &m));
        assert!(matches("a BETWEEN 0 AND 50", None, &m));
        assert!(!matches("a NOT BETWEEN 0 AND 50", None, &m));
        assert!(matches("region IN ('eu', 'us')", None, &m));
        assert!(matches("region NOT IN ('us')", None, &m));
        assert!(matches("region = 'eu' AND TAGS = 'paid'", Some("paid"), &m));
        assert!(matches("region <> 'us' and not (a >= 51)", None, &m));
        assert!(matches("a = 50.0 AND a != 49 AND -1 < a", None, &m));
        assert!(matches("missing IS NULL", None, &m));
        assert!(matches("TRUE", None, &m) && !matches("FALSE", None, &m));
        assert!(matches("note = 'it''s'", None, &[("note", "it's")]));
    }

    #[test]
    fn unknown_properties_and_bad_numbers_match_nothing() {
        let m = [("a", "not a number")];
        for e in [
            "missing = 'x'",
            "missing <> 'x'",
            "NOT (missing = 'x')",
            "missing > 1",
            "a > 1",
            "a BETWEEN 1 AND 2",
            "missing IN ('x')",
            "missing NOT IN ('x')",
            "NOT (missing IN ('x'))",
        ] {
            assert!(!matches(e, None, &m), "{e}");
        }
        // Unknown OR true is true; unknown AND false is false.
        assert!(matches("missing = 'x' OR a = 'not a number'", None, &m));
        assert!(matches("NOT (missing = 'x' AND a = 'other')", None, &m), "NOT (unknown AND false) is true");
    }

    #[test]
    fn errors_say_where() {
        for (e, pos) in [
            ("a >", 3),
            ("a = 'x", 4),
            ("(a = 1", 6),
            ("a BETWEEN 1 2", 12),
            ("a IN (1)", 6),
            ("a # 1", 2),
            ("a = 1 b", 6),
            ("AND", 0),
            ("a NOT 1", 6),
        ] {
            let err = Sql::parse(e).unwrap_err();
            assert_eq!(err.position, pos, "{e}: {err}");
        }
    }

    #[test]
    fn any_text_within_the_limits_parses_evaluates_and_drops_on_a_small_stack() {
        // Tokio's workers have 2 MiB stacks; this thread a quarter of that, and it is a debug
        // build: what fits here fits there.
        let worker = std::thread::Builder::new().stack_size(512 * 1024).spawn(|| {
            let m = props(&[("a", "1")]);
            let check = |text: &str, expect: bool| {
                assert!(text.len() <= MAX_TEXT, "{} bytes", text.len());
                let sql = Sql::parse(text).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(sql.matches(&Props { tag: None, user: &m }), expect);
            };
            // The longest runs of AND and OR the limit lets through.
            let terms = MAX_TEXT / "a = 1 AND ".len();
            check(&vec!["a = 1"; terms].join(" AND "), true);
            check(&(vec!["a = 2"; terms - 1].join(" OR ") + " OR a = 1"), true);
            check(&(vec!["a = 1"; terms - 1].join(" AND ") + " AND a = 2"), false);
            // The deepest nesting, with runs inside every level.
            let open = "(a = 1 AND a = 1 AND (".repeat(MAX_NESTING / 2 - 1);
            let close = "))".repeat(MAX_NESTING / 2 - 1);
            check(&format!("NOT NOT {open}a = 1{close}"), true);
        });
        worker.unwrap().join().unwrap();
    }

    #[test]
    fn texts_past_the_limits_are_refused_with_a_reason() {
        let deep = format!("{}a = 1{}", "(".repeat(MAX_NESTING + 1), ")".repeat(MAX_NESTING + 1));
        let err = Sql::parse(&deep).unwrap_err();
        assert!(err.message.contains("nest more than"), "{err}");
        assert_eq!(err.position, MAX_NESTING);
        let nots = format!("{}a = 1", "NOT ".repeat(MAX_NESTING + 1));
        assert!(Sql::parse(&nots).unwrap_err().message.contains("nest more than"));
        // A run of AND of any length is no deeper than its logarithm; past the byte limit the
        // text is refused before it is read.
        let long = vec!["a = 1"; MAX_TEXT].join(" AND ");
        let err = Sql::parse(&long).unwrap_err();
        assert!(err.message.contains("bytes long"), "{err}");
        assert_eq!(err.position, 0);
        assert!(Sql::parse(&"(".repeat(10_000_000)).is_err());
    }

    // ---- against a reference evaluator ----

    /// Generated conditions: the reference evaluates these directly, by the rules in the module
    /// docs, without the parser or the tree.
    #[derive(Debug, Clone)]
    enum Gen {
        NumCmp(&'static str, &'static str, i64),
        StrEq(&'static str, bool, &'static str),
        Between(&'static str, i64, i64, bool),
        In(&'static str, Vec<&'static str>, bool),
        IsNull(&'static str, bool),
        And(Box<Gen>, Box<Gen>),
        Or(Box<Gen>, Box<Gen>),
        Not(Box<Gen>),
    }

    const NAMES: [&str; 3] = ["a", "b", "c"];
    const WORDS: [&str; 3] = ["x", "y", "10"];

    fn render(g: &Gen) -> String {
        match g {
            Gen::NumCmp(p, op, n) => format!("{p} {op} {n}"),
            Gen::StrEq(p, eq, s) => format!("{p} {} '{s}'", if *eq { "=" } else { "<>" }),
            Gen::Between(p, lo, hi, neg) => format!("{p} {}BETWEEN {lo} AND {hi}", if *neg { "NOT " } else { "" }),
            Gen::In(p, set, neg) => {
                let items: Vec<String> = set.iter().map(|s| format!("'{s}'")).collect();
                format!("{p} {}IN ({})", if *neg { "NOT " } else { "" }, items.join(", "))
            }
            Gen::IsNull(p, neg) => format!("{p} IS {}NULL", if *neg { "NOT " } else { "" }),
            Gen::And(a, b) => format!("({}) AND ({})", render(a), render(b)),
            Gen::Or(a, b) => format!("({}) or ({})", render(a), render(b)),
            Gen::Not(a) => format!("NOT ({})", render(a)),
        }
    }

    /// SQL's three-valued logic, written out as truth tables.
    fn reference(g: &Gen, m: &BTreeMap<String, String>) -> Option<bool> {
        let num = |p: &str| m.get(p).and_then(|v| v.parse::<f64>().ok());
        match g {
            Gen::NumCmp(p, op, n) => {
                let v = num(p)?;
                let n = *n as f64;
                Some(match *op {
                    "=" => v == n,
                    "<>" => v != n,
                    ">" => v > n,
                    ">=" => v >= n,
                    "<" => v < n,
                    _ => v <= n,
                })
            }
            Gen::StrEq(p, eq, s) => m.get(*p).map(|v| (v == s) == *eq),
            Gen::Between(p, lo, hi, neg) => num(p).map(|v| (v >= *lo as f64 && v <= *hi as f64) != *neg),
            Gen::In(p, set, neg) => m.get(*p).map(|v| set.contains(&v.as_str()) != *neg),
            Gen::IsNull(p, neg) => Some(m.contains_key(*p) == *neg),
            Gen::And(a, b) => match (reference(a, m), reference(b, m)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Gen::Or(a, b) => match (reference(a, m), reference(b, m)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
            Gen::Not(a) => reference(a, m).map(|x| !x),
        }
    }

    fn gen() -> impl Strategy<Value = Gen> {
        let name = proptest::sample::select(NAMES.to_vec());
        let word = proptest::sample::select(WORDS.to_vec());
        let op = proptest::sample::select(vec!["=", "<>", ">", ">=", "<", "<="]);
        let leaf = prop_oneof![
            (name.clone(), op, -5i64..15).prop_map(|(p, o, n)| Gen::NumCmp(p, o, n)),
            (name.clone(), any::<bool>(), word.clone()).prop_map(|(p, e, s)| Gen::StrEq(p, e, s)),
            (name.clone(), -5i64..15, -5i64..15, any::<bool>()).prop_map(|(p, a, b, n)| Gen::Between(p, a, b, n)),
            (name.clone(), proptest::collection::vec(word, 1..3), any::<bool>()).prop_map(|(p, s, n)| Gen::In(p, s, n)),
            (name, any::<bool>()).prop_map(|(p, n)| Gen::IsNull(p, n)),
        ];
        leaf.prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (inner.clone(), inner.clone()).prop_map(|(a, b)| Gen::And(Box::new(a), Box::new(b))),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| Gen::Or(Box::new(a), Box::new(b))),
                inner.prop_map(|a| Gen::Not(Box::new(a))),
            ]
        })
    }

    fn message() -> impl Strategy<Value = BTreeMap<String, String>> {
        let value = prop_oneof![(-5i64..15).prop_map(|n| n.to_string()), Just("x".to_string()), Just("y".to_string())];
        proptest::collection::btree_map(proptest::sample::select(NAMES.to_vec()).prop_map(String::from), value, 0..3)
    }

    proptest! {
        #[test]
        fn the_evaluator_agrees_with_the_reference(g in gen(), m in message()) {
            let text = render(&g);
            let sql = Sql::parse(&text).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            let got = sql.matches(&Props { tag: None, user: &m });
            prop_assert_eq!(got, reference(&g, &m) == Some(true), "{} over {:?}", text, m);
        }

        #[test]
        fn parsing_anything_never_panics(s in ".{0,80}") {
            let _ = Sql::parse(&s);
        }
    }
}
