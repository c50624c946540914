//! W3C trace context (`traceparent`) carried from a caller through moira.
//!
//! A caller that has a trace context (a CI job's `TRACEPARENT`, a request
//! to moira-web) runs its work in [`scope`]; commands sent inside it carry
//! the `traceparent` header, a gate-keeper logs it and puts it on the
//! events it stores, so one gate can be followed across processes.

use std::future::Future;

/// The header name, as W3C Trace Context spells it.
pub const HDR_TRACEPARENT: &str = "traceparent";

tokio::task_local! {
    static TRACEPARENT: Option<String>;
}

/// Whether `tp` is a version-00 `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`,
/// ids not all zero. Anything else is dropped, never passed on.
pub fn valid(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    matches!(parts.as_slice(), [v, t, p, f]
        if *v == "00" && hex(t, 32) && hex(p, 16) && hex(f, 2)
            && t.bytes().any(|b| b != b'0') && p.bytes().any(|b| b != b'0'))
}

/// Runs `f` with `tp` as the trace context of the commands it sends (an
/// invalid one is ignored).
pub async fn scope<F: Future>(tp: Option<String>, f: F) -> F::Output {
    TRACEPARENT.scope(tp.filter(|t| valid(t)), f).await
}

/// The trace context in force, if any.
pub fn current() -> Option<String> {
    TRACEPARENT.try_with(|t| t.clone()).ok().flatten()
}

/// Adds the `traceparent` header when there is a trace context.
pub fn add(headers: &mut async_nats::HeaderMap) {
    if let Some(tp) = current() {
        headers.insert(HDR_TRACEPARENT, tp.as_str());
    }
}

/// The valid `traceparent` of a message's headers.
pub fn of(headers: Option<&async_nats::HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(HDR_TRACEPARENT))
        .map(|v| v.as_str().to_string())
        .filter(|t| valid(t))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_well_formed_trace_contexts_pass() {
        assert!(super::valid(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nx: y",
        ] {
            assert!(!super::valid(bad), "{bad:?}");
        }
    }
}
