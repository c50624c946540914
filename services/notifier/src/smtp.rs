//! A small SMTP client: EHLO, STARTTLS when asked, AUTH PLAIN when given a
//! user, one message to its recipients. Every step is bounded by a timeout.

use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::http::{connect, tls, Io};

pub struct Mail<'a> {
    pub server: &'a str,
    pub starttls: bool,
    pub auth: Option<(&'a str, &'a str)>,
    pub from: &'a str,
    pub to: &'a [String],
    pub subject: &'a str,
    pub body: &'a str,
}

pub async fn send(mail: &Mail<'_>, timeout: Duration) -> Result<(), String> {
    tokio::time::timeout(timeout, send_inner(mail))
        .await
        .map_err(|_| {
            format!(
                "the SMTP server {} did not finish within {timeout:?}",
                mail.server
            )
        })?
}

struct Conn {
    io: BufReader<Box<dyn Io>>,
}

impl Conn {
    /// Reads a (possibly multi-line) reply; checks its code.
    async fn reply(&mut self, want: &[u16]) -> Result<String, String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self
                .io
                .read_line(&mut line)
                .await
                .map_err(|e| format!("reading from SMTP: {e}"))?;
            if n == 0 {
                return Err("the SMTP server closed the connection".into());
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                let code = line
                    .get(..3)
                    .and_then(|c| c.parse::<u16>().ok())
                    .ok_or_else(|| format!("not an SMTP reply: {line:?}"))?;
                if !want.contains(&code) {
                    return Err(format!("SMTP said: {}", all.trim()));
                }
                return Ok(all);
            }
        }
    }

    async fn cmd(&mut self, line: &str, want: &[u16]) -> Result<String, String> {
        let io = self.io.get_mut();
        io.write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| format!("writing to SMTP: {e}"))?;
        io.flush()
            .await
            .map_err(|e| format!("writing to SMTP: {e}"))?;
        self.reply(want).await
    }
}

async fn send_inner(m: &Mail<'_>) -> Result<(), String> {
    let (host, port) = m
        .server
        .rsplit_once(':')
        .ok_or_else(|| format!("'{}' is not host:port", m.server))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("bad port in '{}'", m.server))?;
    let mut c = Conn {
        io: BufReader::new(connect(host, port).await?),
    };
    c.reply(&[220]).await?;
    c.cmd("EHLO moira", &[250]).await?;
    if m.starttls {
        c.cmd("STARTTLS", &[220]).await?;
        let plain = c.io.into_inner();
        c = Conn {
            io: BufReader::new(tls(plain, host).await?),
        };
        c.cmd("EHLO moira", &[250]).await?;
    }
    if let Some((user, pass)) = m.auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
        c.cmd(&format!("AUTH PLAIN {token}"), &[235]).await?;
    }
    c.cmd(&format!("MAIL FROM:<{}>", m.from), &[250]).await?;
    for to in m.to {
        c.cmd(&format!("RCPT TO:<{to}>"), &[250, 251]).await?;
    }
    c.cmd("DATA", &[354]).await?;
    let mut data = format!(
        "From: {}\r\nTo: {}\r\nSubject: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        m.from,
        m.to.join(", "),
        m.subject.replace(['\r', '\n'], " ")
    );
    for line in m.body.lines() {
        // Dot-stuffing: a line starting with '.' gets another.
        if line.starts_with('.') {
            data.push('.');
        }
        data.push_str(line);
        data.push_str("\r\n");
    }
    data.push('.');
    c.cmd(&data, &[250]).await?;
    let _ = c.cmd("QUIT", &[221]).await;
    Ok(())
}
