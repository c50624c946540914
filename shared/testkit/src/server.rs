//! nats-server fixtures: one node, or a 3-node JetStream cluster.

use std::path::PathBuf;
use std::time::Duration;

use crate::process::{free_port, Proc, ProcBuilder};
use crate::tempdir::TempDir;
use moira_service::locate::find_nats_server;

const READY: &str = "Server is ready";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Loopback, JetStream, a store folder and a server name.
fn node_args(port: u16, store: &TempDir, name: &str) -> Vec<String> {
    let args = [
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-js",
        "-sd",
        &store.path().display().to_string(),
        "--server_name",
        name,
    ];
    args.iter().map(|a| a.to_string()).collect()
}

fn binary() -> PathBuf {
    match find_nats_server() {
        Ok(b) => b.path,
        Err(e) => panic!("cannot start nats-server for this test: {e}"),
    }
}

/// One nats-server with JetStream, on a free loopback port with a temporary
/// store. It can be stopped and started again on the same port and store.
pub struct NatsServer {
    proc: Option<Proc>,
    args: Vec<String>,
    name: String,
    pub port: u16,
    store: TempDir,
}

impl NatsServer {
    /// Starts a single node and waits until it is ready.
    pub fn start() -> Self {
        let store = TempDir::new("moira-nats").unwrap_or_else(|e| panic!("temp dir: {e}"));
        let port = free_port();
        let args = node_args(port, &store, &format!("moira-test-{port}"));
        let mut s = Self {
            proc: None,
            args,
            name: format!("nats-server :{port}"),
            port,
            store,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> &std::path::Path {
        self.store.path()
    }

    /// Starts the server again (same port, same store) if it is stopped.
    pub fn restart(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    fn spawn(&mut self) {
        if self.proc.is_some() {
            return;
        }
        let proc = ProcBuilder::new(binary(), &self.name)
            .args(&self.args)
            .spawn()
            .unwrap_or_else(|e| panic!("starting nats-server: {e}"));
        self.proc = Some(proc);
    }

    fn wait_ready(&self) {
        if let Some(p) = &self.proc {
            p.wait_for_line(READY, START_TIMEOUT);
        }
    }

    /// Stops the server gracefully (SIGTERM), keeping its store.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Freezes the server (SIGSTOP): its connections stay open and silent,
    /// as a machine that hangs.
    pub fn pause(&self) {
        if let Some(p) = &self.proc {
            p.signal("STOP");
        }
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        if let Some(p) = &self.proc {
            p.signal("CONT");
        }
    }

    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    pub fn log(&self) -> Vec<String> {
        self.proc.as_ref().map(Proc::output).unwrap_or_default()
    }
}

/// Three nats-servers routed into one JetStream cluster.
pub struct Cluster {
    pub nodes: Vec<NatsServer>,
}

impl Cluster {
    pub fn start() -> Self {
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let store =
                TempDir::new("moira-nats-cluster").unwrap_or_else(|e| panic!("temp dir: {e}"));
            let port = client_ports[i];
            let mut args = node_args(port, &store, &format!("n{}-{port}", i + 1));
            args.extend([
                "--cluster_name".into(),
                format!("moira-test-{}", client_ports[0]),
                "--cluster".into(),
                format!("nats://127.0.0.1:{}", cluster_ports[i]),
                "--routes".into(),
                routes.clone(),
            ]);
            let mut node = NatsServer {
                proc: None,
                args,
                name: format!("nats-server n{} :{port}", i + 1),
                port,
                store,
            };
            node.spawn();
            nodes.push(node);
        }
        for n in &nodes {
            n.wait_ready();
        }
        // JetStream is usable once the nodes have elected a meta leader.
        let leader_lines = [
            "JetStream cluster new metadata leader",
            "Self is new JetStream cluster metadata leader",
        ];
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        'wait: while std::time::Instant::now() < deadline {
            for n in &nodes {
                let found = n
                    .proc
                    .as_ref()
                    .and_then(|p| p.try_wait_for(&leader_lines, 1, Duration::from_millis(100)));
                if found.is_some() {
                    break 'wait;
                }
            }
        }
        if !nodes.iter().any(|n| {
            n.proc
                .as_ref()
                .and_then(|p| p.try_wait_for(&leader_lines, 1, Duration::ZERO))
                .is_some()
        }) {
            let logs: Vec<String> = nodes.iter().flat_map(|n| n.log()).collect();
            panic!(
                "the 3-node cluster elected no JetStream meta leader in time:\n{}",
                logs.join("\n")
            );
        }
        Self { nodes }
    }

    /// Client URLs of all nodes, comma-separated (async-nats accepts this).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
