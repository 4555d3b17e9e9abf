//! memring: a memcached proxy on per-core io_uring runtimes.
//!
//! The crate is split so that the wire format, routing and proxy decisions are
//! pure ("sans-IO") and testable without sockets or a clock. Only [`server`]
//! touches tokio-uring, tokio, sockets, threads, signals and time.
//!
//! ```text
//! protocol  -- request parser, upstream response framer, composer (pure)
//! route     -- modula / ketama rings, multi-get fan-out plan (pure)
//! upstream  -- server health bookkeeping that takes `now` (pure)
//! proxy     -- replication / failover rules per verb, reply merging (pure)
//! metrics   -- latency histograms and event counters, Prometheus exposition (pure)
//! stats     -- counters and `stats` rendering
//! config    -- command line and config file -> validated Config
//! server    -- the I/O shell: runtimes, listeners, connections, timers
//! ```

pub mod config;
pub mod metrics;
pub mod protocol;
pub mod proxy;
pub mod route;
pub mod server;
pub mod stats;
pub mod upstream;
