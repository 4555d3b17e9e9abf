//! `stats <group>` and the administration commands (`cache_memlimit`,
//! `slabs ...`, `lru_crawler ...`): the line goes to every server in
//! service and the replies merge into one memcached-shaped answer (see
//! [`crate::proxy::admin_plan`]).

use bytes::Bytes;

use crate::protocol::{compose, Expect};
use crate::proxy::{merge_listings, merge_status, AdminPlan};
use crate::upstream::ServerId;

use super::{one, Answer, CallError, CallId, ClientRequest, Cx, Reply, Work};

/// One admin line fanned out to every server in service.
#[derive(Debug)]
pub(super) struct Admin {
    plan: AdminPlan,
    /// Replies by server order; the call ids are consecutive from `first`.
    replies: Vec<Option<Bytes>>,
    first: CallId,
    waiting: usize,
}

impl Admin {
    pub(super) fn start(
        req: &ClientRequest,
        plan: AdminPlan,
        servers: &[ServerId],
        cx: &mut Cx<'_>,
    ) -> Work {
        let expect = match plan {
            AdminPlan::Listing(e) => e,
            AdminPlan::FirstServer => Expect::Stats,
            _ => Expect::Line,
        };
        // `stats settings|conns` describe one memcached: the first in service answers.
        let wanted = if plan == AdminPlan::FirstServer {
            1
        } else {
            usize::MAX
        };
        let line = req.bytes.slice(..req.r.line_len.min(req.bytes.len()));
        let mut first = None;
        let mut n = 0;
        for &s in servers {
            if !cx.is_up(s) || n >= wanted {
                continue;
            }
            let call = cx.send(s, [line.clone(), Bytes::new()], expect);
            first.get_or_insert(call);
            n += 1;
        }
        let Some(first) = first else {
            cx.answer(one(compose::NO_SERVER));
            return Work::Done;
        };
        Work::Admin(Admin {
            plan,
            replies: vec![None; n],
            first,
            waiting: n,
        })
    }

    pub(super) fn on_outcome(
        &mut self,
        call: CallId,
        outcome: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        let i = call.wrapping_sub(self.first) as usize;
        let Some(slot) = self.replies.get_mut(i) else {
            return;
        };
        self.waiting = self.waiting.saturating_sub(1);
        if let Ok(r) = outcome {
            *slot = Some(r.frame);
        }
        if self.waiting > 0 {
            return;
        }
        let got: Vec<Bytes> = self.replies.iter_mut().filter_map(Option::take).collect();
        let a = match self.plan {
            _ if got.is_empty() => one(compose::NO_SERVER),
            AdminPlan::Listing(_) => Answer::Many(merge_listings(&got)),
            AdminPlan::FirstServer => got.into_iter().next().map_or(Answer::Nothing, Answer::One),
            _ => merge_status(&got).map_or(Answer::Nothing, Answer::One),
        };
        cx.answer(a);
    }

    pub(super) fn is_done(&self) -> bool {
        self.waiting == 0
    }
}
