//! Property: whatever the servers answer, in whatever order, every machine
//! (and every machine it spawns) ends within a bounded number of outcomes,
//! a client-facing machine answers exactly once and a detached one never,
//! every Send gets its outcome before the machine is done, a machine that
//! is not done always has a call in flight, and nothing is emitted after
//! the end.

use proptest::prelude::*;

use super::*;

const REQUESTS: &[&str] = &[
    "get a\r\n",
    "gets b\r\n",
    "gat 10 a\r\n",
    "get a b c d\r\n",
    "gats 5 a b\r\n",
    "get a c\r\n",
    "get b b\r\n",
    "mg a v\r\n",
    "mg a v q k\r\n",
    "me b\r\n",
    "set a 0 0 1\r\nx\r\n",
    "set a 0 0 1 noreply\r\nx\r\n",
    "add a 0 0 1\r\nx\r\n",
    "replace b 0 0 1\r\nx\r\n",
    "cas a 0 0 1 5\r\nx\r\n",
    "append a 0 0 1\r\nx\r\n",
    "prepend b 0 0 1 noreply\r\nx\r\n",
    "incr a 1\r\n",
    "decr b 1 noreply\r\n",
    "delete a\r\n",
    "touch a 5\r\n",
    "ms a 1\r\nx\r\n",
    "ms a 1 MA q\r\nx\r\n",
    "md a q\r\n",
    "md a C3\r\n",
    "ma a\r\n",
    "flush_all\r\n",
    "flush_all noreply\r\n",
];

/// Replies a server may give, by the shape the request expects.
fn canned(expect: Expect) -> &'static [&'static str] {
    match expect {
        Expect::Values => &[
            "END\r\n",
            "VALUE a 0 1\r\nx\r\nEND\r\n",
            "VALUE b 0 1\r\ny\r\nEND\r\n",
            "VALUE a 0 1\r\nx\r\nVALUE c 0 1\r\nz\r\nEND\r\n",
            "SERVER_ERROR boom\r\n",
        ],
        Expect::Line => &[
            "STORED\r\n",
            "NOT_STORED\r\n",
            "EXISTS\r\n",
            "NOT_FOUND\r\n",
            "DELETED\r\n",
            "TOUCHED\r\n",
            "OK\r\n",
            "7\r\n",
            "SERVER_ERROR boom\r\n",
        ],
        Expect::Meta => &[
            "VA 1 f0 t-1 c7\r\nx\r\n",
            "HD c7\r\n",
            "HD\r\n",
            "EN\r\n",
            "NF\r\n",
            "NS\r\n",
            "EX\r\n",
            "SERVER_ERROR boom\r\n",
        ],
        Expect::Stats => &["END\r\n"],
        Expect::Lines => &["key=a exp=-1\r\nEND\r\n"],
    }
}

const ERRORS: [Failure; 5] = [
    Failure::Connect,
    Failure::Timeout,
    Failure::Closed,
    Failure::Protocol,
    Failure::Tls,
];

fn replicas_of(key: &[u8], with_backup: bool) -> Replicas {
    let mut r = if matches!(key.first(), Some(b'a' | b'c')) {
        RA
    } else {
        RB
    };
    if !with_backup {
        r.backup = None;
    }
    r
}

/// One machine under test and what it did.
struct Tracked {
    m: Machine,
    client: bool,
    pending: Vec<Sent>,
    answers: usize,
}

impl Tracked {
    /// Record `fx`; spawned machines are returned for the caller to start.
    fn absorb(&mut self, fx: Vec<Effect>, spawned: &mut Vec<Machine>) -> Result<(), TestCaseError> {
        for e in fx {
            match e {
                Effect::Send {
                    call,
                    server,
                    parts,
                    expect,
                } => {
                    prop_assert!(!self.pending.iter().any(|s| s.call == call));
                    self.pending.push(Sent {
                        call,
                        server,
                        bytes: [parts[0].as_ref(), parts[1].as_ref()].concat(),
                        expect,
                        section: false,
                    });
                }
                // A section, or a hedge timer: granted at its turn.
                Effect::Exclusive { call, .. } | Effect::Hedge(Hedge::Timer { call, .. }) => {
                    prop_assert!(!self.pending.iter().any(|s| s.call == call));
                    let timer = matches!(e, Effect::Hedge(_));
                    self.pending.push(Sent {
                        call,
                        server: ServerId(0),
                        bytes: if timer { TIMER.to_vec() } else { Vec::new() },
                        expect: Expect::Line,
                        section: true,
                    });
                }
                Effect::Hedge(Hedge::Send {
                    call,
                    backup,
                    parts,
                    expect,
                    ..
                }) => {
                    prop_assert!(!self.pending.iter().any(|s| s.call == call));
                    self.pending.push(Sent {
                        call,
                        server: backup,
                        bytes: [parts[0].as_ref(), parts[1].as_ref()].concat(),
                        expect,
                        section: false,
                    });
                }
                Effect::Hedge(Hedge::Won { .. }) | Effect::HoldClient(_) => {}
                Effect::Answer(_) => self.answers += 1,
                Effect::Spawn(m) => spawned.push(*m),
                Effect::Count(..)
                | Effect::Failover { .. }
                | Effect::MissedWrite { .. }
                | Effect::ReadThrough(_) => {}
            }
        }
        Ok(())
    }

    /// Done means nothing in flight but hedge timers (which a machine does
    /// not wait for, and the engine drops once it is done); not done means
    /// something else in flight.
    fn check(&mut self) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            self.m.is_done(),
            self.pending.iter().all(|s| s.bytes == TIMER),
            "done iff no call in flight"
        );
        if self.m.is_done() {
            self.pending.clear();
        }
        Ok(())
    }
}

/// How a hedge timer shows among the calls in flight.
const TIMER: &[u8] = b"hedge timer";

/// Most outcomes any request needs: a 4-key multi-get takes 2 fetch rounds,
/// read-throughs, touches and their repairs (4 calls each).
const MAX_STEPS: usize = 80;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_machine_ends_answers_once_and_then_stays_silent(
        which in 0..REQUESTS.len(),
        down in proptest::collection::vec(any::<bool>(), 4),
        with_backup in any::<bool>(),
        hedge in any::<bool>(),
        script in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..MAX_STEPS),
    ) {
        let world = World::new().hedging(hedge);
        let policy = HealthPolicy::default();
        for (i, d) in down.iter().enumerate() {
            if *d {
                for _ in 0..policy.failure_limit {
                    world.health[i].record_failure(Instant::now(), &policy, crate::upstream::Ejection::Timeout);
                }
            }
        }
        let request = req(REQUESTS[which]);
        let reps: Vec<Replicas> = if request.r.verb == Verb::FlushAll {
            Vec::new()
        } else if request.keys().is_empty() {
            vec![replicas_of(request.key(), with_backup)]
        } else {
            request
                .keys()
                .iter()
                .map(|k| replicas_of(&request.bytes[k.clone()], with_backup))
                .collect()
        };
        let mut fx = Vec::new();
        let m = Machine::start(request, &reps, &ALL, &world, &mut fx);
        let mut machines = vec![Tracked { m, client: true, pending: Vec::new(), answers: 0 }];
        let mut spawned = Vec::new();
        machines[0].absorb(fx, &mut spawned)?;
        machines[0].check()?;
        let mut steps = 0;
        loop {
            for m in spawned.drain(..) {
                let mut t = Tracked { m, client: false, pending: Vec::new(), answers: 0 };
                let mut fx = Vec::new();
                t.m.begin(&world, &mut fx);
                let mut more = Vec::new();
                t.absorb(fx, &mut more)?;
                prop_assert!(more.is_empty(), "a copy spawns nothing");
                t.check()?;
                machines.push(t);
            }
            let in_flight: usize = machines.iter().map(|t| t.pending.len()).sum();
            if in_flight == 0 {
                break;
            }
            prop_assert!(steps < MAX_STEPS, "still running after {} outcomes", steps);
            let (pick, outcome) = script.get(steps).copied().unwrap_or((0, 0));
            steps += 1;
            // Pick one call in flight, across every machine.
            let mut k = usize::from(pick) % in_flight;
            let mut target = 0;
            for (i, t) in machines.iter().enumerate() {
                if k < t.pending.len() {
                    target = i;
                    break;
                }
                k -= t.pending.len();
            }
            let t = &mut machines[target];
            let sent = t.pending.remove(k);
            let replies = canned(sent.expect);
            let o = usize::from(outcome) % (replies.len() + ERRORS.len());
            let r = match replies.get(o) {
                // A section is only ever granted, whenever its turn comes.
                _ if sent.section => Ok(Reply::grant()),
                Some(text) => Ok(reply(sent.expect, text.as_bytes())),
                None => Err(CallError::new(
                    sent.server,
                    sent.expect,
                    ERRORS[o - replies.len()],
                )),
            };
            let mut fx = Vec::new();
            t.m.on_outcome(sent.call, r, &world, &mut fx);
            t.absorb(fx, &mut spawned)?;
            t.check()?;
        }
        for t in &mut machines {
            prop_assert!(t.m.is_done());
            prop_assert_eq!(t.answers, usize::from(t.client), "answers of a machine");
            let mut fx = Vec::new();
            for call in [0, 1, 2, 3, LOOSE] {
                t.m.on_outcome(call, Err(CallError::no_call(ServerId(0), Expect::Line)), &world, &mut fx);
            }
            prop_assert!(fx.is_empty(), "effects after the end: {:?}", fx);
            prop_assert!(t.m.is_done());
        }
    }
}
