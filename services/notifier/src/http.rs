//! A small HTTP/1.1 client for webhooks: one POST per connection, plain or
//! TLS (the system's root certificates), every step bounded by a timeout.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("'{s}' is not an http(s) URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse::<u16>().map_err(|_| format!("bad port in '{s}'"))?,
            ),
            None => (authority, if https { 443 } else { 80 }),
        };
        if host.is_empty() {
            return Err(format!("no host in '{s}'"));
        }
        Ok(Url {
            https,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .map(|b| {
                        b.with_root_certificates(rustls::RootCertStore::empty())
                            .with_no_client_auth()
                    })
                    .unwrap_or_else(|e| panic!("no TLS configuration possible: {e}"))
                });
            Arc::new(config)
        })
        .clone()
}

/// Wraps a connected stream in TLS for `host`.
pub async fn tls(stream: Box<dyn Io>, host: &str) -> Result<Box<dyn Io>, String> {
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("bad TLS name {host}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(tls_config());
    let s = connector
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    Ok(Box::new(s))
}

pub async fn connect(host: &str, port: u16) -> Result<Box<dyn Io>, String> {
    let s = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let _ = s.set_nodelay(true);
    Ok(Box::new(s))
}

/// POSTs `body`; Ok(status) for any well-formed answer.
pub async fn post(
    url: &Url,
    headers: &[(&str, String)],
    body: &[u8],
    timeout: Duration,
) -> Result<u16, String> {
    tokio::time::timeout(timeout, post_inner(url, headers, body))
        .await
        .map_err(|_| {
            format!(
                "no answer from {}:{} within {timeout:?}",
                url.host, url.port
            )
        })?
}

async fn post_inner(url: &Url, headers: &[(&str, String)], body: &[u8]) -> Result<u16, String> {
    let mut io = connect(&url.host, url.port).await?;
    if url.https {
        io = tls(io, &url.host).await?;
    }
    let mut req = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: moira-notifier\r\nContent-Length: {}\r\nConnection: close\r\n",
        url.path,
        url.host,
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending: {e}"))?;
    io.write_all(body)
        .await
        .map_err(|e| format!("sending: {e}"))?;
    io.flush().await.map_err(|e| format!("sending: {e}"))?;
    // Only the status line matters; read a bounded amount.
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while got < buf.len() {
        let n = io
            .read(&mut buf[got..])
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        got += n;
        if buf[..got].windows(2).any(|w| w == b"\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..got]);
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(format!(
            "not an HTTP answer: {:?}",
            line.chars().take(80).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Url::parse("https://hooks.example.com/a/b?c=1"),
            Ok(Url {
                https: true,
                host: "hooks.example.com".into(),
                port: 443,
                path: "/a/b?c=1".into()
            })
        );
        assert_eq!(
            Url::parse("http://127.0.0.1:8080").map(|u| (u.port, u.path)),
            Ok((8080, "/".into()))
        );
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://:80/").is_err());
        assert!(Url::parse("http://h:port/").is_err());
    }
}
