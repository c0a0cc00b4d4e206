//! Distributed-tracing hooks, so that a publish and its deliveries on every node can be
//! seen as one trace without this crate knowing OpenTelemetry.
//!
//! A publish stores the W3C `traceparent` of its span with the event (stream field `tp`,
//! and in the live message); each node that fans the event out records a `deliver` span
//! whose parent is that `traceparent`. The binary installs the hook when tracing export
//! is configured; without it, nothing is recorded and nothing is stored.

use std::sync::OnceLock;

use crate::event::StoredEvent;

/// The tracing integration (implemented by the binary with OpenTelemetry).
pub trait TraceHook: Send + Sync + 'static {
    /// The `traceparent` of the current span, if it is being traced.
    fn traceparent(&self) -> Option<String>;
    /// Makes `span` a child of a remote `traceparent` (e.g. a publisher's header).
    fn adopt_parent(&self, span: &tracing::Span, traceparent: &str);
}

static HOOK: OnceLock<Box<dyn TraceHook>> = OnceLock::new();

/// Installs the hook (once per process).
pub fn set_hook(hook: Box<dyn TraceHook>) {
    let _ = HOOK.set(hook);
}

/// The installed hook; `None` when tracing export is off, and then nothing is traced.
pub fn hook() -> Option<&'static dyn TraceHook> {
    HOOK.get().map(|h| &**h)
}

/// The `traceparent` to store with a publish made in the current span.
pub fn current_traceparent() -> Option<String> {
    hook().and_then(TraceHook::traceparent)
}

/// Records that this node is fanning `event` out to `subscribers` local streams, as a
/// span in the publisher's trace.
pub fn delivered(event: &StoredEvent, subscribers: usize) {
    let (Some(hook), Some(tp)) = (hook(), event.trace.as_deref()) else {
        return;
    };
    let span = tracing::info_span!(
        target: "ssegate_trace",
        "deliver",
        channel = %event.channel,
        event_id = %event.id,
        subscribers,
    );
    hook.adopt_parent(&span, tp);
    drop(span);
}
