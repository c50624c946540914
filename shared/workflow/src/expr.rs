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

use std::fmt;

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
    let chars: Vec<char> = src.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == c)
                .ok_or_else(|| bad(format!("unterminated text in `{src}`")))?;
            out.push(Tok::Text(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
        } else if let Some(op) = ["==", "!=", "&&", "||"]
            .into_iter()
            .find(|op| src[byte(&chars, i)..].starts_with(op))
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
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '-' | '.'))
            {
                i += 1;
            }
            out.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            return Err(bad(format!("unexpected '{c}' in `{src}`")));
        }
    }
    Ok(out)
}

fn byte(chars: &[char], i: usize) -> usize {
    chars[..i].iter().map(|c| c.len_utf8()).sum()
}

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    src: &'a str,
}

impl Parser<'_> {
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
            return Ok(Expr::Not(Box::new(self.unary()?)));
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
                let e = self.or()?;
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
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
        src,
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
