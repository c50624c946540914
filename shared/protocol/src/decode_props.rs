//! Property tests of decoding what arrives from the network: commands in
//! either format, gate events and run events. Any bytes give a value or a
//! clear error, never a panic; what moira encodes decodes to itself.

use proptest::prelude::*;

use crate::command::{ApproveGate, Format, PushBackGate};
use crate::event::{Decoded, Envelope};
use crate::ids::GateId;
use crate::run::RunEnvelope;
use crate::wire::Verb;
use crate::Command;

const VERBS: [Verb; 5] = [
    Verb::Open,
    Verb::Approve,
    Verb::Deny,
    Verb::PushBack,
    Verb::Cancel,
];

fn approve(actor: String, comment: Option<String>, inputs: Vec<(String, String)>) -> Command {
    Command::Approve(ApproveGate {
        gate_id: GateId::new(),
        actor,
        comment,
        inputs: inputs.into_iter().collect(),
        ..Default::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_to_a_command_or_an_error(body in proptest::collection::vec(any::<u8>(), 0..512), v in 0..5usize, json in any::<bool>()) {
        let format = if json { Format::Json } else { Format::MsgPack };
        let _ = Command::decode(VERBS[v], format, &body);
    }

    #[test]
    fn any_bytes_decode_to_an_event_or_an_error(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Envelope::decode(&body);
        let _ = RunEnvelope::decode(&body);
    }

    #[test]
    fn deep_nesting_is_refused_not_followed(depth in 1usize..5_000, open in prop_oneof![Just(0x91u8), Just(0x81u8), Just(b'[')]) {
        // MessagePack arrays/maps of one, or JSON arrays, nested `depth` deep.
        let body = vec![open; depth];
        let _ = Envelope::decode(&body);
        let _ = RunEnvelope::decode(&body);
        let _ = Command::decode(Verb::Approve, Format::MsgPack, &body);
        let _ = Command::decode(Verb::Approve, Format::Json, &body);
    }

    #[test]
    fn an_encoded_command_decodes_to_itself_and_a_damaged_one_never_panics(
        actor in "[a-z]{1,12}",
        comment in proptest::option::of(".{0,40}"),
        inputs in proptest::collection::vec(("[A-Za-z_][A-Za-z0-9_]{0,8}", ".{0,20}"), 0..4),
        json in any::<bool>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let format = if json { Format::Json } else { Format::MsgPack };
        let cmd = approve(actor, comment, inputs);
        let bytes = cmd.encode(format);
        let back = Command::decode(Verb::Approve, format, &bytes).expect("round trip");
        prop_assert_eq!(&back, &cmd);
        let mut damaged = bytes.clone();
        for (i, b) in flips {
            let at = i.index(damaged.len());
            damaged[at] ^= b;
        }
        let _ = Command::decode(Verb::Approve, format, &damaged);
        let _ = Command::decode(Verb::Approve, format, &bytes[..cut.index(bytes.len() + 1).min(bytes.len())]);
    }

    #[test]
    fn a_stored_event_decodes_to_itself_and_a_damaged_one_never_panics(
        comment in proptest::option::of(".{0,40}"),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let gate = GateId::new();
        let cmd = Command::PushBack(PushBackGate { gate_id: gate, actor: "bob".into(), comment: comment.clone(), ..Default::default() });
        let env = Envelope {
            schema: crate::event::SCHEMA,
            id: crate::ids::CommandId::new(),
            gate_id: gate,
            actor: cmd.actor().to_string(),
            at: 1,
            event: crate::GateEvent::GatePushedBack { comment, inputs: Default::default() },
            run_id: None,
            signature: None,
            signed_at: None,
            signer: None,
            registry: None,
            prev: None,
            via: None,
            on_behalf_of: None,
        };
        let bytes = env.encode();
        match Envelope::decode(&bytes) {
            Ok(Decoded::Event(back)) => prop_assert_eq!(back, env),
            other => prop_assert!(false, "{other:?}"),
        }
        let mut damaged = bytes;
        for (i, b) in flips {
            let at = i.index(damaged.len());
            damaged[at] ^= b;
        }
        let _ = Envelope::decode(&damaged);
    }
}
