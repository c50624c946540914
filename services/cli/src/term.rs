//! Making text safe to write to a terminal.
//!
//! Gate messages, comments, reasons, names and step output come from other
//! people and programs. Written raw, an escape sequence could erase a line
//! and draw a fake decision, set the window title or write the clipboard
//! (OSC 52), and bidi controls could reorder what is shown. Everything the
//! CLI prints passes through [`text`]: C0 controls but newline and tab, DEL,
//! C1 controls and bidi controls become `\uXXXX`. That form is also a valid
//! JSON string escape, so `--json` output stays valid JSON.

use std::borrow::Cow;

/// Whether `c` must not reach a terminal as it is.
fn unsafe_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}'..='\u{1f}' | '\u{7f}'..='\u{9f}'
        // bidi embeddings, overrides, isolates and marks
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        | '\u{200e}' | '\u{200f}' | '\u{61c}')
}

/// `s` with every unsafe character written as `\uXXXX`.
pub fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(unsafe_char) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Writes to stdout. When the reader has gone (`moira … | head`), the
/// process ends quietly with status 0, as other command-line tools do,
/// instead of panicking on the broken pipe.
pub fn write_out(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        // Nowhere to say it but stderr; the command's own result stands.
        eprintln!("moira: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `println!` through [`text`] and [`write_out`].
macro_rules! outln {
    () => { $crate::term::write_out("\n") };
    ($($t:tt)*) => { $crate::term::write_out(&format!("{}\n", $crate::term::text(&format!($($t)*)))) };
}

/// `print!` through [`text`] and [`write_out`].
macro_rules! out {
    ($($t:tt)*) => { $crate::term::write_out(&$crate::term::text(&format!($($t)*))) };
}

/// `eprintln!` through [`text`].
macro_rules! errln {
    () => { eprintln!() };
    ($($t:tt)*) => { eprintln!("{}", $crate::term::text(&format!($($t)*))) };
}

/// `eprint!` through [`text`].
macro_rules! err {
    ($($t:tt)*) => { eprint!("{}", $crate::term::text(&format!($($t)*))) };
}

#[cfg(test)]
mod tests {
    use super::text;

    #[test]
    fn escapes_controls_and_keeps_text() {
        assert_eq!(text("Deploy v1?\n\tok"), "Deploy v1?\n\tok");
        assert_eq!(text("é 日本"), "é 日本");
        assert_eq!(text("a\u{1b}[2Kb"), "a\\u001b[2Kb");
        assert_eq!(
            text("\u{1b}]52;c;ZXZpbA==\u{7}"),
            "\\u001b]52;c;ZXZpbA==\\u0007"
        );
        assert_eq!(text("x\ry"), "x\\u000dy");
        assert_eq!(text("\u{9b}31m"), "\\u009b31m");
        assert_eq!(text("abc\u{202e}fed"), "abc\\u202efed");
        assert_eq!(text("\u{7f}"), "\\u007f");
        // Still valid JSON inside a string.
        let j = format!("\"{}\"", text("a\u{202e}\u{9b}b"));
        assert_eq!(
            serde_json::from_str::<String>(&j).expect("json"),
            "a\u{202e}\u{9b}b"
        );
    }
}
