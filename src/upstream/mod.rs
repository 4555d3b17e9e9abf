//! Server health bookkeeping, sans-IO: failures, ejection, probing and
//! rejoin. Every function takes `now` instead of reading a clock.
//!
//! Must not import `server`, tokio or sockets.
