//! Test fixtures that run real processes: a nats-server single node or a
//! 3-node cluster on free loopback ports with a temporary store, and helpers
//! to run moira's own binaries and wait for what they print.
//!
//! Every process is stopped by its pid when its handle is dropped, and its
//! temporary folder is removed. Nothing here sleeps to "let things settle":
//! callers wait for log lines or for conditions.
//!
//! [`locate`] is also used by `moira dev` to find the nats-server binary the
//! same way tests do.

#![forbid(unsafe_code)]

mod process;
mod server;
mod tempdir;

pub use moira_service::locate::{
    self as locate, find_nats_server, LocateError, NatsServerBinary, MIN_VERSION,
};
pub use process::{free_port, Proc, ProcBuilder};
pub use server::{Cluster, NatsServer};
pub use tempdir::TempDir;
