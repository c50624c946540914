//! What every moira binary shares, so services depend on this small crate
//! rather than on each other (or on the test kit):
//!
//! - [`signals`]: SIGINT/SIGTERM, tracing setup and the exit code;
//! - [`connect`]: the broker connection flags (credentials, TLS), with
//!   their environment variables;
//! - [`locate`]: finding a nats-server binary that is new enough;
//! - [`registry`]: the approvers registry (users and their roles);
//! - [`requests`]: answering requests with bounded concurrency and drain.

#![forbid(unsafe_code)]

pub mod connect;
pub mod locate;
pub mod registry;
pub mod requests;
pub mod signals;

pub use connect::ConnectArgs;
pub use locate::{find_nats_server, LocateError, NatsServerBinary, MIN_VERSION};
pub use registry::Registry;
