//! Per-request proxy decisions, sans-IO: which servers a verb goes to, how a
//! backup is kept in step with its primary, and how replies are merged.
//!
//! Must not import `server`, tokio, sockets or the clock.
