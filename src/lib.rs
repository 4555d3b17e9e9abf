//! memring: a memcached proxy on per-core io_uring event loops.
//!
//! The crate is split so that the wire format, routing and proxy decisions are
//! pure ("sans-IO") and testable without sockets or a clock. Only [`server`]
//! touches io_uring, epoll, sockets, threads, signals and time.
//!
//! ```text
//! protocol  -- request parser, upstream response framer, composer (pure)
//! route     -- modula / ketama rings, nutcracker's hashes, the Router that
//!              places every key (pure)
//! upstream  -- server health bookkeeping that takes `now` (pure)
//! proxy     -- replication / failover rules per verb, reply merging, the
//!              request, client-connection and upstream-connection machines,
//!              the binary protocol adapter (pure)
//! metrics   -- latency histograms and event counters, Prometheus exposition (pure)
//! stats     -- counters and `stats` rendering
//! config    -- command line and config file -> validated Config
//! server    -- the I/O shell: drivers, per-core event loops, the TLS transport,
//!              control plane
//! ```

// Test code may read the clock (the production build is held to clippy.toml).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod config;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod route;
// The I/O shell owns the clock (clippy.toml bans it everywhere else).
#[allow(clippy::disallowed_methods)]
pub mod server;
pub mod stats;
pub mod upstream;
