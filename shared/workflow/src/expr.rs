//! `${{ … }}` templates and the small expression language inside them.
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := unary ("&&" unary)*
//! unary   := "!" unary | compare
//! compare := primary (("==" | "!=") primary)?
//! primary := "(" expr ")" | 'text' | "text" | true | false | number | path
//! path    := vars.NAME | steps.STEP.outputs.KEY | steps.STEP.status
//! ```
//!
//! Values are text or booleans. A missing output is empty text. Text is
//! true unless it is empty or `false`.
//!
//! Templates come from workflow files, which anyone who may submit a run
//! writes, so parsing is bounded: a template is at most [`MAX_TEMPLATE`]
//! bytes and an expression nests at most [`MAX_DEPTH`] levels. Evaluation
//! recurses only over a parsed tree, so it inherits that bound.
//!
//! In a `run:` command a template never becomes shell text:
//! [`Template::render_shell`] turns each `${{ … }}` into a quoted reference
//! to an environment variable that holds the value.

use std::collections::BTreeMap;
use std::fmt;

/// The longest template accepted, in bytes.
pub const MAX_TEMPLATE: usize = 16 * 1024;
/// How deeply `!` and `( )` may nest in one expression.
pub const MAX_DEPTH: usize = 32;
/// The prefix of the environment variables that carry template values
/// into a `run:` command (`MOIRA_EXPR_1`, `MOIRA_EXPR_2`, …).
pub const SHELL_VAR_PREFIX: &str = "MOIRA_EXPR_";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExprError(pub String);

fn bad(msg: impl Into<String>) -> ExprError {
    ExprError(msg.into())
}

/// A reference to something a template reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    Var(String),
    Output { step: String, key: String },
    Status { step: String },
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Var(n) => write!(f, "vars.{n}"),
            Path::Output { step, key } => write!(f, "steps.{step}.outputs.{key}"),
            Path::Status { step } => write!(f, "steps.{step}.status"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Text(String),
    Bool(bool),
    Path(Path),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Eq(Box<Expr>, Box<Expr>),
    Ne(Box<Expr>, Box<Expr>),
}

/// The value of an expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Bool(bool),
}

impl Value {
    pub fn truthy(&self) -> bool {
        match self {
            Value::Bool(b) => *b,
            Value::Text(t) => !t.is_empty() && t != "false",
        }
    }
    pub fn into_text(self) -> String {
        match self {
            Value::Text(t) => t,
            Value::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Text(String),
    Word(String),
    Op(&'static str),
}

fn lex(src: &str) -> Result<Vec<Tok>, ExprError> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(c) = src[i..].chars().next() {
        let rest = &src[i..];
        if c.is_whitespace() {
            i += c.len_utf8();
        } else if c == '\'' || c == '"' {
            let end = rest[1..]
                .find(c)
                .ok_or_else(|| bad(format!("unterminated text in `{src}`")))?;
            out.push(Tok::Text(rest[1..1 + end].to_string()));
            i += end + 2;
        } else if let Some(op) = ["==", "!=", "&&", "||"]
            .into_iter()
            .find(|op| rest.starts_with(op))
        {
            out.push(Tok::Op(op));
            i += 2;
        } else if c == '!' || c == '(' || c == ')' {
            out.push(Tok::Op(match c {
                '!' => "!",
                '(' => "(",
                _ => ")",
            }));
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let len = rest
                .find(|d: char| !(d.is_ascii_alphanumeric() || matches!(d, '_' | '-' | '.')))
                .unwrap_or(rest.len());
            out.push(Tok::Word(rest[..len].to_string()));
            i += len;
        } else {
            return Err(bad(format!("unexpected '{c}' in `{src}`")));
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    src: &'a str,
    depth: usize,
}

impl Parser<'_> {
    /// Counts one level of nesting; refuses past [`MAX_DEPTH`].
    fn enter(&mut self) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(bad(format!(
                "an expression may nest `!` and `( )` at most {MAX_DEPTH} deep"
            )));
        }
        Ok(())
    }
    fn peek_op(&self, op: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Op(o)) if *o == op)
    }
    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.and()?;
        while self.peek_op("||") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        while self.peek_op("&&") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }
    fn unary(&mut self) -> Result<Expr, ExprError> {
        if self.peek_op("!") {
            self.pos += 1;
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        let left = self.primary()?;
        for (op, make) in [
            ("==", Expr::Eq as fn(_, _) -> _),
            ("!=", Expr::Ne as fn(_, _) -> _),
        ] {
            if self.peek_op(op) {
                self.pos += 1;
                return Ok(make(Box::new(left), Box::new(self.primary()?)));
            }
        }
        Ok(left)
    }
    fn primary(&mut self) -> Result<Expr, ExprError> {
        let tok = self.toks.get(self.pos).cloned();
        self.pos += 1;
        match tok {
            Some(Tok::Op("(")) => {
                self.enter()?;
                let e = self.or()?;
                self.depth -= 1;
                if !self.peek_op(")") {
                    return Err(bad(format!("missing ')' in `{}`", self.src)));
                }
                self.pos += 1;
                Ok(e)
            }
            Some(Tok::Text(t)) => Ok(Expr::Text(t)),
            Some(Tok::Word(w)) if w == "true" || w == "false" => Ok(Expr::Bool(w == "true")),
            Some(Tok::Word(w)) if w.chars().all(|c| c.is_ascii_digit() || c == '.') => {
                Ok(Expr::Text(w))
            }
            Some(Tok::Word(w)) => parse_path(&w).map(Expr::Path),
            other => Err(bad(format!(
                "expected a value in `{}`, found {other:?}",
                self.src
            ))),
        }
    }
}

fn parse_path(w: &str) -> Result<Path, ExprError> {
    let parts: Vec<&str> = w.split('.').collect();
    match parts.as_slice() {
        ["vars", name] => Ok(Path::Var(name.to_string())),
        ["steps", step, "outputs", key] => Ok(Path::Output {
            step: step.to_string(),
            key: key.to_string(),
        }),
        ["steps", step, "status"] => Ok(Path::Status {
            step: step.to_string(),
        }),
        _ => Err(bad(format!(
            "unknown reference `{w}`; use vars.NAME, steps.STEP.outputs.KEY or steps.STEP.status"
        ))),
    }
}

pub fn parse(src: &str) -> Result<Expr, ExprError> {
    if src.len() > MAX_TEMPLATE {
        return Err(bad(format!(
            "an expression is longer than {MAX_TEMPLATE} bytes"
        )));
    }
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
        src,
        depth: 0,
    };
    let e = p.or()?;
    if p.pos != p.toks.len() {
        return Err(bad(format!("unexpected trailing input in `{src}`")));
    }
    Ok(e)
}

impl Expr {
    pub fn eval(&self, lookup: &dyn Fn(&Path) -> Option<String>) -> Value {
        match self {
            Expr::Text(t) => Value::Text(t.clone()),
            Expr::Bool(b) => Value::Bool(*b),
            Expr::Path(p) => Value::Text(lookup(p).unwrap_or_default()),
            Expr::Not(e) => Value::Bool(!e.eval(lookup).truthy()),
            Expr::And(a, b) => Value::Bool(a.eval(lookup).truthy() && b.eval(lookup).truthy()),
            Expr::Or(a, b) => Value::Bool(a.eval(lookup).truthy() || b.eval(lookup).truthy()),
            Expr::Eq(a, b) => Value::Bool(a.eval(lookup).into_text() == b.eval(lookup).into_text()),
            Expr::Ne(a, b) => Value::Bool(a.eval(lookup).into_text() != b.eval(lookup).into_text()),
        }
    }

    pub fn paths(&self, out: &mut Vec<Path>) {
        match self {
            Expr::Path(p) => out.push(p.clone()),
            Expr::Not(e) => e.paths(out),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Eq(a, b) | Expr::Ne(a, b) => {
                a.paths(out);
                b.paths(out);
            }
            Expr::Text(_) | Expr::Bool(_) => {}
        }
    }
}

/// A string with `${{ … }}` parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Expr(Expr),
}

impl Template {
    pub fn parse(src: &str) -> Result<Template, ExprError> {
        if src.len() > MAX_TEMPLATE {
            return Err(bad(format!(
                "a template is longer than {MAX_TEMPLATE} bytes"
            )));
        }
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(start) = rest.find("${{") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 3..];
            let end = after
                .find("}}")
                .ok_or_else(|| bad(format!("unclosed `${{{{` in `{src}`")))?;
            parts.push(Part::Expr(parse(after[..end].trim())?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template { parts })
    }

    pub fn render(&self, lookup: &dyn Fn(&Path) -> Option<String>) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Lit(l) => l.clone(),
                Part::Expr(e) => e.eval(lookup).into_text(),
            })
            .collect()
    }

    /// Renders a `run:` command for `sh -c` without putting any value into
    /// the shell text: each `${{ … }}` becomes a reference to a variable
    /// `MOIRA_EXPR_<n>`, returned with its value. The reference is quoted
    /// for where it stands (`"${V}"` outside quotes, `${V}` inside double
    /// quotes, `'"${V}"'` inside single quotes), so the value reaches the
    /// command as one literal word. Whatever the surrounding text, only
    /// quote characters and a variable name are inserted: a value can
    /// never become shell syntax.
    pub fn render_shell(
        &self,
        lookup: &dyn Fn(&Path) -> Option<String>,
    ) -> (String, BTreeMap<String, String>) {
        let mut script = String::new();
        let mut vars = BTreeMap::new();
        let mut quotes = ShellQuotes::default();
        for p in &self.parts {
            match p {
                Part::Lit(l) => {
                    quotes.feed(l);
                    script.push_str(l);
                }
                Part::Expr(e) => {
                    let name = format!("{SHELL_VAR_PREFIX}{}", vars.len() + 1);
                    let reference = match quotes.state {
                        Quote::None => format!("\"${{{name}}}\""),
                        Quote::Double => format!("${{{name}}}"),
                        Quote::Single => format!("'\"${{{name}}}\"'"),
                    };
                    script.push_str(&reference);
                    vars.insert(name, e.eval(lookup).into_text());
                }
            }
        }
        (script, vars)
    }

    /// A condition: a template that is one expression, or plain text.
    pub fn truthy(&self, lookup: &dyn Fn(&Path) -> Option<String>) -> bool {
        match self.parts.as_slice() {
            [Part::Expr(e)] => e.eval(lookup).truthy(),
            _ => Value::Text(self.render(lookup).trim().to_string()).truthy(),
        }
    }

    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        for p in &self.parts {
            if let Part::Expr(e) = p {
                e.paths(&mut out);
            }
        }
        out
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Quote {
    #[default]
    None,
    Single,
    Double,
}

/// Follows `sh` quoting through literal text, well enough to pick how to
/// quote a variable reference. It only chooses quoting; safety does not
/// depend on it (see [`Template::render_shell`]).
#[derive(Debug, Default)]
struct ShellQuotes {
    state: Quote,
    escaped: bool,
}

impl ShellQuotes {
    fn feed(&mut self, text: &str) {
        for c in text.chars() {
            if self.escaped {
                self.escaped = false;
                continue;
            }
            self.state = match (self.state, c) {
                (Quote::None, '\\') | (Quote::Double, '\\') => {
                    self.escaped = true;
                    self.state
                }
                (Quote::None, '\'') => Quote::Single,
                (Quote::None, '"') => Quote::Double,
                (Quote::Single, '\'') | (Quote::Double, '"') => Quote::None,
                (s, _) => s,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(p: &Path) -> Option<String> {
        match p {
            Path::Var(n) if n == "env" => Some("prod".into()),
            Path::Var(n) if n == "tag" => Some("v1.0.0".into()),
            Path::Output { step, key } if step == "approve-deploy" && key == "approved_by" => {
                Some("bob".into())
            }
            _ => None,
        }
    }

    #[test]
    fn renders_templates() {
        let t = Template::parse(
            "./deploy.sh ${{ vars.tag }} --by \"${{ steps.approve-deploy.outputs.approved_by }}\"",
        )
        .expect("parse");
        assert_eq!(t.render(&lookup), "./deploy.sh v1.0.0 --by \"bob\"");
        assert_eq!(
            Template::parse("plain").expect("parse").render(&lookup),
            "plain"
        );
    }

    #[test]
    fn evaluates_conditions() {
        let c = |s: &str| Template::parse(s).expect("parse").truthy(&lookup);
        assert!(c("${{ vars.env == 'prod' }}"));
        assert!(!c("${{ vars.env != 'prod' }}"));
        assert!(c("${{ vars.env == 'dev' || vars.tag == \"v1.0.0\" }}"));
        assert!(!c("${{ !(vars.env == 'prod') && true }}"));
        assert!(!c("${{ vars.missing }}"));
        assert!(c("true"));
        assert!(!c("false"));
    }

    #[test]
    fn reports_errors() {
        assert!(Template::parse("${{ vars.env == 'prod' ").is_err());
        assert!(Template::parse("${{ vars.env == 'prod }}").is_err());
        assert!(Template::parse("${{ secrets.token }}").is_err());
        assert!(Template::parse("${{ vars.a vars.b }}").is_err());
        assert!(Template::parse("${{ vars.a = 'x' }}").is_err());
    }

    #[test]
    fn shell_rendering_keeps_values_out_of_the_script() {
        let evil = "x$(touch /tmp/p)`id`;\"'";
        let look = |_: &Path| Some(evil.to_string());
        let t = Template::parse("echo ${{ vars.a }} \"by ${{ vars.a }}\" 'q ${{ vars.a }}'")
            .expect("parse");
        let (script, vars) = t.render_shell(&look);
        assert_eq!(
            script,
            "echo \"${MOIRA_EXPR_1}\" \"by ${MOIRA_EXPR_2}\" 'q '\"${MOIRA_EXPR_3}\"''"
        );
        assert!(!script.contains("touch"));
        assert_eq!(vars.len(), 3);
        assert!(vars.values().all(|v| v == evil));
    }

    #[test]
    fn escaped_quotes_do_not_change_the_quoting() {
        let look = |_: &Path| Some("v".to_string());
        let t = Template::parse("echo \\\" ${{ vars.a }} \"a\\\"b ${{ vars.a }}\"").expect("parse");
        let (script, _) = t.render_shell(&look);
        assert_eq!(
            script,
            "echo \\\" \"${MOIRA_EXPR_1}\" \"a\\\"b ${MOIRA_EXPR_2}\""
        );
    }

    #[test]
    fn deep_nesting_and_long_templates_are_refused_without_recursing() {
        let deep = format!("${{{{ {}vars.a }}}}", "!".repeat(5_000));
        let e = Template::parse(&deep).expect_err("too deep");
        assert!(e.0.contains("nest"), "{e}");
        let parens = format!(
            "${{{{ {}vars.a{} }}}}",
            "(".repeat(5_000),
            ")".repeat(5_000)
        );
        assert!(Template::parse(&parens).is_err());
        let ok = format!("${{{{ {}vars.a }}}}", "!".repeat(MAX_DEPTH));
        assert!(Template::parse(&ok).is_ok());
        assert!(Template::parse(&"x".repeat(MAX_TEMPLATE + 1)).is_err());
    }

    #[test]
    fn lists_references() {
        let t = Template::parse("${{ vars.a }} ${{ steps.b.outputs.c == vars.d }}").expect("parse");
        assert_eq!(
            t.paths(),
            vec![
                Path::Var("a".into()),
                Path::Output {
                    step: "b".into(),
                    key: "c".into()
                },
                Path::Var("d".into())
            ]
        );
    }
}
