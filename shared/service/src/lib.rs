//! What every moira binary shares, so services depend on this small crate
//! rather than on each other (or on the test kit):
//!
//! - [`signals`]: SIGINT/SIGTERM, tracing setup and the exit code;
//! - [`connect`]: the broker connection flags (credentials, TLS), with
//!   their environment variables;
//! - [`locate`]: finding a nats-server binary that is new enough;
//! - [`registry`]: the approvers registry (users, roles and keys), and
//!   [`live`]: the same shared through a KV bucket, signed by admins;
//! - [`requests`]: answering requests with bounded concurrency and drain;
//! - [`feed`]: the durable consumers every copy of a service shares, and
//!   the loop that follows one through broker errors;
//! - [`ops`]: Prometheus metrics and the health and readiness probes;
//! - [`verify`]: checking a gate's trail (chain, signatures, policy) and
//!   exporting it for `ssh-keygen -Y verify`.

#![forbid(unsafe_code)]

pub mod connect;
pub mod feed;
pub mod index;
pub mod links;
pub mod live;
pub mod locate;
pub mod ops;
pub mod registry;
pub mod requests;
pub mod signals;
pub mod slack;
pub mod verify;

pub use connect::ConnectArgs;
pub use locate::{find_nats_server, LocateError, NatsServerBinary, MIN_VERSION};
pub use registry::Registry;
