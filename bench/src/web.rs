//! moira-web: listing and live decision events over HTTP.

use super::*;

pub(crate) struct WebFigures {
    pub(crate) api_ms: u64,
    pub(crate) page_ms: u64,
    pub(crate) client_ms: u64,
    pub(crate) sse_p50: Duration,
    pub(crate) sse_p99: Duration,
    pub(crate) watch_p50: Duration,
}

/// A moira-web (`--auth dev`) over `web_gates` waiting gates: the API's
/// and the page's list against the client's own fold of the same gates,
/// then 50 decisions, each timed from its send to its event on an open
/// `/api/v1/events` stream and to its line in a running `moira gate watch`.
pub(crate) async fn web_figures(sizes: &Sizes) -> anyhow::Result<WebFigures> {
    let server = NatsServer::start();
    let url = server.url();
    let _gk = gatekeeper(&url)?;
    let listen = format!("127.0.0.1:{}", moira_testkit::free_port());
    let web = ProcBuilder::new(bin_dir()?.join("moira-web"), "moira-web")
        .args(["--nats-url", &url, "--listen", &listen, "--auth", "dev"])
        .env("MOIRA_LOG", "warn,moira_web=info")
        .spawn()?;
    web.wait_for_line("moira-web ready", Duration::from_secs(30));
    let ids = open_many(&url, sizes.web_gates, |i| {
        gate("alice", &format!("waiting gate {i}"))
    })
    .await?;
    let client = Client::connect(&url).await?;
    let http = reqwest::Client::new();
    let root = format!("http://{listen}");
    let (mut api, mut page, mut local) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let body = http
            .get(format!("{root}/api/v1/gates?limit=1000"))
            .send()
            .await?
            .text()
            .await?;
        api.push(t.elapsed());
        anyhow::ensure!(
            body.contains(&format!("\"total\":{}", ids.len())),
            "the API listed something else"
        );
        let t = Instant::now();
        let body = http.get(format!("{root}/")).send().await?.text().await?;
        page.push(t.elapsed());
        anyhow::ensure!(body.contains("waiting gate"), "the page listed nothing");
        let t = Instant::now();
        let filter = moira_client::ListFilter {
            status: Some(GateStatus::Waiting),
            run_id: None,
        };
        let n = client.list(&filter).await?.len();
        local.push(t.elapsed());
        anyhow::ensure!(n == ids.len(), "the client listed {n}");
    }
    let mut sse = http.get(format!("{root}/api/v1/events")).send().await?;
    let watch = ProcBuilder::new(bin_dir()?.join("moira"), "moira gate watch")
        .args(["--nats-url", &url, "gate", "watch"])
        .env("NO_COLOR", "1")
        .spawn()?;
    watch.wait_for_line("watching gate events", Duration::from_secs(30));
    // Both followers are live once they show an event made after they started.
    let probe = client.open(gate("alice", "probe")).await?.id.to_string();
    let mut buf = String::new();
    read_sse_until(&mut sse, &mut buf, &probe).await?;
    watch.wait_for_line(&probe, Duration::from_secs(30));
    let watch = Arc::new(watch);
    let (mut to_sse, mut to_watch) = (Vec::new(), Vec::new());
    for id in ids.iter().take(50) {
        let key = id.to_string();
        let t = Instant::now();
        client
            .approve(ApproveGate {
                gate_id: *id,
                actor: "bob".into(),
                ..Default::default()
            })
            .await?;
        let w = watch.clone();
        let k = key.clone();
        let seen_by_watch = tokio::task::spawn_blocking(move || {
            w.wait_for_line(&k, Duration::from_secs(30));
            t.elapsed()
        });
        buf.clear();
        read_sse_until(&mut sse, &mut buf, &key).await?;
        to_sse.push(t.elapsed());
        to_watch.push(seen_by_watch.await?);
    }
    to_sse.sort();
    to_watch.sort();
    Ok(WebFigures {
        api_ms: median_ms(api),
        page_ms: median_ms(page),
        client_ms: median_ms(local),
        sse_p50: pct(&to_sse, 0.5),
        sse_p99: pct(&to_sse, 0.99),
        watch_p50: pct(&to_watch, 0.5),
    })
}

/// Reads the event stream until `needle` has come.
pub(crate) async fn read_sse_until(
    resp: &mut reqwest::Response,
    buf: &mut String,
    needle: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !buf.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.push_str(&String::from_utf8_lossy(&c)),
            Ok(Ok(None)) => anyhow::bail!("the event stream ended"),
            Ok(Err(e)) => anyhow::bail!("the event stream failed: {e}"),
            Err(_) => anyhow::bail!("no event for {needle} within 30 s"),
        }
    }
    Ok(())
}
