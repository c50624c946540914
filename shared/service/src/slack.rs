//! Text for Slack, shared by the notifier and the web service.

/// Escapes text for Slack mrkdwn: `&`, `<` and `>` are the only
/// characters Slack reads as control syntax (links, `<!channel>`
/// mentions), so after this a gate's text can neither mention anyone nor
/// disguise a link.
pub fn mrkdwn_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn mrkdwn_is_escaped() {
        assert_eq!(
            super::mrkdwn_escape("<!channel> <https://evil.example/login|open in moira> & co"),
            "&lt;!channel&gt; &lt;https://evil.example/login|open in moira&gt; &amp; co"
        );
    }
}
