//! moira's wire protocol and the pure gate state machine.
//!
//! Nothing in this crate does I/O: services wrap it with NATS calls.
//!
//! # Layout
//! - [`ids`]: gate, run and command ids (UUID based, subject-safe).
//! - [`wire`]: everything on the wire that is not a message body: every
//!   subject, stream, bucket, consumer and header name, and the stream configs.
//! - [`event`]: gate events, their envelope and the MessagePack codec.
//! - [`command`]: command requests and replies (MessagePack or JSON).
//! - [`gate`]: the gate state, `decide` (all the rules) and `apply` (none).
//! - [`view`]: the JSON shape of a gate shown to people and tools.
//! - [`binding`]: the artifacts or action a gate approves, and `gate check`.
//! - [`stages`]: ordered approval stages.
//! - [`run`]: workflow run events and their fold.
//! - [`time`]: millisecond timestamps and duration parsing.

#![forbid(unsafe_code)]

pub mod binding;
pub mod codec;
pub mod command;
pub mod event;
pub mod gate;
pub mod hex;
pub mod ids;
pub mod run;
pub mod stages;
pub mod statement;
pub mod time;
pub mod view;
pub mod wire;

#[cfg(test)]
mod decode_props;

pub use command::{Command, CommandError, ErrorCode, Reply};
pub use event::{Envelope, GateEvent};
pub use gate::{apply, decide, fold, Context, Decision, GateState, GateStatus, Rejection};
pub use ids::{CommandId, GateId, IdError};
pub use view::GateView;
