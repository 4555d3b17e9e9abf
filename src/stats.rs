//! Counters and the `stats` reply.
