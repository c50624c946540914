//! End-to-end tests: real nats-server, real moira processes.

mod gates;
