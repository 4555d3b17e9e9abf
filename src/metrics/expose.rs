//! A [`Snapshot`] in the OpenMetrics text format, through the
//! `prometheus-client` crate's encoder (a custom collector over the merged
//! numbers: the request path never touches the crate's own metric types).
//!
//! OpenMetrics 1.0 text is what that encoder writes; Prometheus asks for it
//! first and parses it natively (the 0.0.4 text format differs only in the
//! `# EOF` and `# UNIT` lines and the `_total` suffix on counter families).
//!
//! # Names
//! ```text
//! memring_requests_total{command}                 counter
//! memring_request_duration_seconds{command}      histogram  (client-visible)
//! memring_upstream_request_duration_seconds{server}  histogram
//! memring_upstream_errors_total{server,kind}     counter
//! memring_hedges_total{server,result}            counter (sent won skipped)
//! memring_server_up{server,role,pool}            gauge 1 serving, 0 out
//! memring_server_state{server,state}             gauge 1 for the current state
//! memring_failovers_total  memring_read_through_total{result}
//! memring_ejections_total{server,reason}         counter (connect timeout closed protocol drain_failed tls)
//! memring_suspects_total{server,reason}          counter (timeout missed_write)
//! memring_suspects_cleared_total{server}  memring_flushes_total{server}
//! memring_keys_logged_total{server}  memring_drains_total{server}  memring_drained_keys_total{server}
//! memring_upstream_aborts_total{server}
//! memring_resync_copies_total  memring_repairs_total  memring_section_waits_total
//! memring_migration_reads_total{result}  memring_migration_deletes_total
//! memring_migration_window_open  memring_migration_placements
//! memring_hot_key_reads_per_second{key_hash,pool}  gauge (the top 10)
//! memring_upstream_desyncs_total  memring_input_memory_refusals_total  memring_client_input_bytes
//! memring_client_connections  memring_client_connections_rejected_total
//! memring_client_read_bytes_total  memring_client_written_bytes_total
//! memring_info{version,io_backend}               gauge 1
//! ```

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{
    Command, HedgeResult, HistogramSnapshot, ReadThrough, Snapshot, UpstreamErrorKind, BUCKETS_NS,
};
use crate::upstream::{Counters, Ejection, State};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Render a snapshot as an OpenMetrics text exposition.
pub fn render(snap: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snap)));
    let mut out = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        // Writing into a String cannot fail; keep what was written.
        out.push_str("# EOF\n");
    }
    out
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

/// A per-server counter family with a `reason` label: name, help, the
/// reasons shown, and where the counts are.
type ByReason = (
    &'static str,
    &'static str,
    &'static [Ejection],
    fn(&Counters) -> &[u64; Ejection::COUNT],
);

/// A per-server counter family: name, help, and the count.
type PerServer = (&'static str, &'static str, fn(&Counters) -> u64);

type Labels<'a> = [(&'static str, &'a str)];

/// One metric family: its samples are written by `each`.
fn family<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    ty: MetricType,
    each: impl FnOnce(&mut MetricEncoder) -> Result<(), std::fmt::Error> + 'a,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, ty)?;
    each(&mut m)
}

fn counter(m: &mut MetricEncoder, labels: &Labels<'_>, v: u64) -> Result<(), std::fmt::Error> {
    m.encode_family(&labels)?
        .encode_counter::<NoLabelSet, _, u64>(&v, None)
}

fn gauge(m: &mut MetricEncoder, labels: &Labels<'_>, v: i64) -> Result<(), std::fmt::Error> {
    m.encode_family(&labels)?.encode_gauge(&v)
}

fn histogram(
    m: &mut MetricEncoder,
    labels: &Labels<'_>,
    h: &HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut buckets = [(0.0f64, 0u64); super::NB];
    for (i, b) in buckets.iter_mut().enumerate() {
        let bound = BUCKETS_NS
            .get(i)
            .map_or(f64::INFINITY, |&ns| ns as f64 / 1e9);
        *b = (bound, h.buckets[i]);
    }
    m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
        h.sum_ns as f64 / 1e9,
        h.count(),
        &buckets,
        None,
    )
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let p = &s.process;
        let seconds = Unit::Seconds;
        family(
            &mut enc,
            "memring_info",
            "memring's version and the I/O backend in use",
            None,
            MetricType::Gauge,
            |m| {
                gauge(
                    m,
                    &[("version", s.version), ("io_backend", s.io_backend)],
                    1,
                )
            },
        )?;
        // Commands never seen are left out: they would only be zeros.
        let seen: Vec<(Command, &HistogramSnapshot)> = Command::ALL
            .iter()
            .zip(&s.requests)
            .filter(|(_, h)| h.count() > 0)
            .map(|(c, h)| (*c, h))
            .collect();
        family(
            &mut enc,
            "memring_requests",
            "Client requests answered, by command",
            None,
            MetricType::Counter,
            |m| {
                for (c, h) in &seen {
                    counter(m, &[("command", c.label())], h.count())?;
                }
                Ok(())
            },
        )?;
        if s.timing {
            family(
                &mut enc,
                "memring_request_duration",
                "Client-visible latency: from the read that brought a request's first byte \
                 to the write that sent its reply's last byte",
                Some(&seconds),
                MetricType::Histogram,
                |m| {
                    for (c, h) in &seen {
                        histogram(m, &[("command", c.label())], h)?;
                    }
                    Ok(())
                },
            )?;
            family(
                &mut enc,
                "memring_upstream_request_duration",
                "Upstream call latency per server, from the turn that wrote the request on the \
                 server's connection to the turn that framed its reply",
                Some(&seconds),
                MetricType::Histogram,
                |m| {
                    for srv in &s.servers {
                        histogram(m, &[("server", &srv.name)], &srv.upstream)?;
                    }
                    Ok(())
                },
            )?;
        }
        family(
            &mut enc,
            "memring_upstream_errors",
            "Upstream calls that got no reply, by server and kind",
            None,
            MetricType::Counter,
            |m| {
                for srv in &s.servers {
                    for k in UpstreamErrorKind::ALL {
                        counter(
                            m,
                            &[("server", &srv.name), ("kind", k.label())],
                            srv.errors[*k as usize],
                        )?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "memring_hedges",
            "Late reads of the server sent to its backup too (sent), answered first by the \
             backup's hit (won), or not sent because the core's hedge budget was spent (skipped)",
            None,
            MetricType::Counter,
            |m| {
                for srv in &s.servers {
                    for h in HedgeResult::ALL {
                        counter(
                            m,
                            &[("server", &srv.name), ("result", h.label())],
                            srv.hedges[*h as usize],
                        )?;
                    }
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "memring_server_up",
            "1 while the server takes traffic, 0 while it is suspect, ejected, probed or draining",
            None,
            MetricType::Gauge,
            |m| {
                for srv in &s.servers {
                    let up = i64::from(srv.state == State::Up);
                    let labels = [
                        ("server", srv.name.as_str()),
                        ("role", srv.role.as_str()),
                        ("pool", srv.pool.as_str()),
                    ];
                    gauge(m, &labels, up)?;
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "memring_server_state",
            "1 for the server's current health state, 0 for the others",
            None,
            MetricType::Gauge,
            |m| {
                for srv in &s.servers {
                    for st in State::ALL {
                        let v = i64::from(srv.state == st);
                        gauge(m, &[("server", &srv.name), ("state", st.as_str())], v)?;
                    }
                }
                Ok(())
            },
        )?;
        let by_reason: [ByReason; 2] = [
            (
                "memring_ejections",
                "Times a server was taken out of service, by the failure that did it \
                 (refused, reset or garbled connections directly; a stuck connection \
                 or a missed write only once a probe failed too)",
                &Ejection::EJECTIONS,
                |c| &c.ejected_for,
            ),
            (
                "memring_suspects",
                "Times a server turned suspect (stopped serving until a probe answered), \
                 by reason",
                &Ejection::SUSPICIONS,
                |c| &c.suspected_for,
            ),
        ];
        for (name, help, reasons, of) in by_reason {
            family(&mut enc, name, help, None, MetricType::Counter, |m| {
                for srv in &s.servers {
                    for r in reasons {
                        counter(
                            m,
                            &[("server", &srv.name), ("reason", r.as_str())],
                            of(&srv.health)[*r as usize],
                        )?;
                    }
                }
                Ok(())
            })?;
        }
        let per_server: [PerServer; 8] = [
            (
                "memring_suspects_cleared",
                "Suspicions that ended with the server back in service, without an ejection",
                |c| c.suspects_cleared,
            ),
            (
                "memring_flushes",
                "Times a server was flushed before rejoining (its missed-key log overflowed \
                 or it missed a flush_all)",
                |c| c.flushes,
            ),
            (
                "memring_keys_logged",
                "Keys put in a server's missed-key log (writes acknowledged without it)",
                |c| c.keys_logged,
            ),
            (
                "memring_drains",
                "Rejoins that deleted a server's missed keys instead of flushing it",
                |c| c.drains,
            ),
            (
                "memring_drained_keys",
                "Keys deleted on servers by rejoin drains",
                |c| c.drained_keys,
            ),
            (
                "memring_sweeps",
                "Sweeps after reloads that moved keys: the keys a server no longer owns deleted there",
                |c| c.sweeps,
            ),
            (
                "memring_swept_keys",
                "Keys deleted by those sweeps",
                |c| c.swept_keys,
            ),
            (
                "memring_upstream_aborts",
                "Upstream connections given up with requests unanswered: reset, never \
                 closed gracefully, so the kernel drops those requests",
                |c| c.aborts,
            ),
        ];
        for (name, help, of) in per_server {
            family(&mut enc, name, help, None, MetricType::Counter, |m| {
                for srv in &s.servers {
                    counter(m, &[("server", &srv.name)], of(&srv.health))?;
                }
                Ok(())
            })?;
        }
        family(
            &mut enc,
            "memring_read_through",
            "Primary misses looked up on the backup, by result",
            None,
            MetricType::Counter,
            |m| {
                for r in ReadThrough::ALL {
                    counter(m, &[("result", r.label())], s.read_through[*r as usize])?;
                }
                Ok(())
            },
        )?;
        family(
            &mut enc,
            "memring_migration_reads",
            "Keys that missed on their new owner during a migration window and were looked up \
             on an earlier owner, by result",
            None,
            MetricType::Counter,
            |m| {
                counter(m, &[("result", "hit")], p.migration_hits)?;
                counter(m, &[("result", "miss")], p.migration_misses)
            },
        )?;
        family(
            &mut enc,
            "memring_hot_key_reads_per_second",
            "Estimated reads per second of the hottest keys (the last ten seconds or so), by a \
             hash of the key (the key itself is never exported) and its pool",
            None,
            MetricType::Gauge,
            |m| {
                for (key, pool, rate) in &p.hot_keys {
                    let labels = [("key_hash", key.as_str()), ("pool", pool.as_str())];
                    m.encode_family(&labels)?.encode_gauge(rate)?;
                }
                Ok(())
            },
        )?;
        let plain: [(&str, &str, MetricType, u64); 17] = [
            (
                "memring_migration_deletes",
                "Deletes sent to earlier owners by writes during a migration window",
                MetricType::Counter,
                p.migration_deletes,
            ),
            (
                "memring_migration_window_open",
                "1 while a migration window is open (keys moved by a reload or DNS change)",
                MetricType::Gauge,
                p.migration_window_open,
            ),
            (
                "memring_migration_placements",
                "Earlier placements the open migration window reads from",
                MetricType::Gauge,
                p.migration_placements,
            ),
            (
                "memring_failovers",
                "Requests answered by the other replica because one failed or was out",
                MetricType::Counter,
                p.failovers,
            ),
            (
                "memring_resync_copies",
                "Items copied back into a rejoined server (warm rejoin)",
                MetricType::Counter,
                p.resync_copies,
            ),
            (
                "memring_repairs",
                "Items put back on a primary from its backup",
                MetricType::Counter,
                p.repairs,
            ),
            (
                "memring_section_waits",
                "Primary-first writes (incr, append, add, cas...) that waited for their key's exclusive section",
                MetricType::Counter,
                p.section_waits,
            ),
            (
                "memring_upstream_desyncs",
                "Upstream connections found out of step with their requests (a value for a key \
                 not asked for, a meta reply without its opaque, bytes no request asked for)",
                MetricType::Counter,
                p.backend_desyncs,
            ),
            (
                "memring_input_memory_refusals",
                "Partial client requests refused because buffered input passed --max-input-memory",
                MetricType::Counter,
                p.input_memory_refusals,
            ),
            (
                "memring_client_input_bytes",
                "Unparsed client input buffered now (partial requests), all cores",
                MetricType::Gauge,
                p.input_bytes,
            ),
            (
                "memring_client_connections",
                "Open client connections",
                MetricType::Gauge,
                p.client_connections,
            ),
            (
                "memring_tls_client_connections",
                "Open client connections on the TLS listener",
                MetricType::Gauge,
                p.tls_connections,
            ),
            (
                "memring_tls_handshakes",
                "TLS handshakes completed with clients",
                MetricType::Counter,
                p.tls_handshakes,
            ),
            (
                "memring_tls_hellos_on_plaintext_port",
                "Connections to the plaintext listener that began with a TLS handshake (closed)",
                MetricType::Counter,
                p.tls_on_plain_port,
            ),
            (
                "memring_client_connections_rejected",
                "Client connections refused at the connection limit",
                MetricType::Counter,
                p.client_connections_rejected,
            ),
            (
                "memring_client_read_bytes",
                "Bytes read from clients",
                MetricType::Counter,
                p.client_bytes_read,
            ),
            (
                "memring_client_written_bytes",
                "Bytes written to clients",
                MetricType::Counter,
                p.client_bytes_written,
            ),
        ];
        for (name, help, ty, v) in plain {
            family(&mut enc, name, help, None, ty, |m| match ty {
                MetricType::Gauge => m.encode_gauge(&(v as i64)),
                _ => m.encode_counter::<NoLabelSet, _, u64>(&v, None),
            })?;
        }
        family(
            &mut enc,
            "memring_tls_handshake_errors",
            "Client TLS handshakes that failed, by reason (not_tls: plaintext on the TLS port; \
             timeout: --tls-handshake-timeout; no_certificate / bad_certificate: --tls-ca)",
            None,
            MetricType::Counter,
            |m| {
                for (reason, n) in &p.tls_handshake_errors {
                    counter(m, &[("reason", reason)], *n)?;
                }
                Ok(())
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{
        CoreMetrics, ProcessCounters, ServerInput, ServerMetrics, Snapshot, UpstreamErrorKind,
    };
    use super::*;
    use crate::upstream::Counters;
    use crate::upstream::Role;

    fn sample() -> Snapshot {
        let cores = [CoreMetrics::default()];
        for _ in 0..3 {
            cores[0].record_request(Command::Get, Duration::from_micros(45));
        }
        cores[0].record_request(Command::Set, Duration::from_millis(15));
        cores[0].read_through(ReadThrough::Miss);
        let m = ServerMetrics::new(1);
        m.record_upstream(0, Duration::from_micros(25));
        m.upstream_error(0, UpstreamErrorKind::Connect);
        let mut health = Counters {
            flushes: 2,
            ejections: 1,
            suspects: 3,
            suspects_cleared: 2,
            keys_logged: 40,
            drains: 2,
            drained_keys: 38,
            ..Counters::default()
        };
        health.ejected_for[Ejection::Timeout as usize] = 1;
        health.suspected_for[Ejection::Timeout as usize] = 2;
        health.suspected_for[Ejection::MissedWrite as usize] = 1;
        let servers = [ServerInput {
            name: "127.0.0.1:11211",
            role: Role::Primary,
            pool: "default",
            state: State::Down,
            health,
            metrics: &m,
        }];
        let process = ProcessCounters {
            client_connections: 4,
            client_connections_rejected: 1,
            client_bytes_read: 100,
            client_bytes_written: 200,
            failovers: 5,
            resync_copies: 0,
            repairs: 0,
            section_waits: 0,
            backend_desyncs: 0,
            input_memory_refusals: 0,
            input_bytes: 0,
            tls_connections: 1,
            tls_handshakes: 3,
            tls_handshake_errors: vec![("not_tls", 2), ("timeout", 0)],
            tls_on_plain_port: 0,
            migration_hits: 2,
            migration_misses: 1,
            migration_deletes: 0,
            migration_window_open: 1,
            migration_placements: 1,
            hot_keys: vec![("00000000000000ab".into(), "default".into(), 1500.0)],
        };
        Snapshot::take(&cores, &servers, process, "io_uring", true)
    }

    #[test]
    fn exposition_has_the_documented_names_and_values() {
        let text = render(sample());
        let want = [
            "memring_info{version=\"",
            "memring_requests_total{command=\"get\"} 3\n",
            "memring_requests_total{command=\"set\"} 1\n",
            "# TYPE memring_request_duration_seconds histogram\n",
            "memring_request_duration_seconds_bucket{le=\"0.00005\",command=\"get\"} 3\n",
            "memring_request_duration_seconds_bucket{le=\"0.01\",command=\"set\"} 0\n",
            "memring_request_duration_seconds_bucket{le=\"0.02\",command=\"set\"} 1\n",
            "memring_request_duration_seconds_bucket{le=\"+Inf\",command=\"set\"} 1\n",
            "memring_request_duration_seconds_count{command=\"get\"} 3\n",
            "memring_upstream_request_duration_seconds_count{server=\"127.0.0.1:11211\"} 1\n",
            "memring_upstream_errors_total{server=\"127.0.0.1:11211\",kind=\"connect\"} 1\n",
            "memring_upstream_errors_total{server=\"127.0.0.1:11211\",kind=\"timeout\"} 0\n",
            "memring_server_up{server=\"127.0.0.1:11211\",role=\"primary\",pool=\"default\"} 0\n",
            "memring_server_state{server=\"127.0.0.1:11211\",state=\"down\"} 1\n",
            "memring_server_state{server=\"127.0.0.1:11211\",state=\"up\"} 0\n",
            "memring_server_state{server=\"127.0.0.1:11211\",state=\"suspect\"} 0\n",
            "memring_server_state{server=\"127.0.0.1:11211\",state=\"draining\"} 0\n",
            "memring_ejections_total{server=\"127.0.0.1:11211\",reason=\"timeout\"} 1\n",
            "memring_ejections_total{server=\"127.0.0.1:11211\",reason=\"connect\"} 0\n",
            "memring_ejections_total{server=\"127.0.0.1:11211\",reason=\"drain_failed\"} 0\n",
            "memring_suspects_total{server=\"127.0.0.1:11211\",reason=\"timeout\"} 2\n",
            "memring_suspects_total{server=\"127.0.0.1:11211\",reason=\"missed_write\"} 1\n",
            "memring_suspects_cleared_total{server=\"127.0.0.1:11211\"} 2\n",
            "memring_flushes_total{server=\"127.0.0.1:11211\"} 2\n",
            "memring_keys_logged_total{server=\"127.0.0.1:11211\"} 40\n",
            "memring_drains_total{server=\"127.0.0.1:11211\"} 2\n",
            "memring_drained_keys_total{server=\"127.0.0.1:11211\"} 38\n",
            "memring_read_through_total{result=\"miss\"} 1\n",
            "memring_migration_reads_total{result=\"hit\"} 2\n",
            "memring_migration_reads_total{result=\"miss\"} 1\n",
            "memring_migration_window_open 1\n",
            "memring_hot_key_reads_per_second{key_hash=\"00000000000000ab\",pool=\"default\"} 1500.0\n",
            "memring_failovers_total 5\n",
            "memring_client_connections 4\n",
            "memring_client_connections_rejected_total 1\n",
            "memring_client_read_bytes_total 100\n",
            "memring_client_written_bytes_total 200\n",
            "memring_tls_client_connections 1\n",
            "memring_tls_handshakes_total 3\n",
            "memring_tls_handshake_errors_total{reason=\"not_tls\"} 2\n",
            "memring_tls_handshake_errors_total{reason=\"timeout\"} 0\n",
        ];
        for w in want {
            assert!(text.contains(w), "missing {w:?} in\n{text}");
        }
        assert!(text.contains("io_backend=\"io_uring\""), "{text}");
        assert!(
            !text.contains("command=\"delete\""),
            "unseen commands are left out"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn without_timing_there_are_no_histograms() {
        let mut s = sample();
        s.timing = false;
        let text = render(s);
        assert!(text.contains("memring_requests_total{command=\"get\"} 3\n"));
        assert!(!text.contains("_bucket"), "{text}");
    }
}
