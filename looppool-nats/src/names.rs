//! Where a pool's messages live on the broker: subjects, streams, consumers
//! and headers, all derived from the pool's id.

/// Header: the worker incarnation a message belongs to.
pub(crate) const INCARNATION: &str = "Lp-Inc";
/// Header: a worker's output sequence number within its incarnation.
pub(crate) const SEQUENCE: &str = "Lp-Seq";
/// Header: on a task message, its number within the incarnation (init,
/// tasks and stop are numbered 1, 2, 3, ...): with the incarnation, the
/// message's identity, which a worker runs once.
pub(crate) const TASK: &str = "Lp-Task";
/// Header: on an output message, `slot:number` for each task whose frames
/// it carries (see `relay::ids`).
pub(crate) const TAGS: &str = "Lp-Tasks";
/// Header: on a worker's heartbeat, the messages it dropped so far
/// (malformed, stale, duplicates, overflow).
pub(crate) const DROPPED: &str = "Lp-Dropped";
/// Header: on a worker's heartbeat, the sequence number of the last output
/// message the broker confirmed it stored.
pub(crate) const STORED: &str = "Lp-Stored";
/// Header: on a worker's heartbeat, the task-message number up to which it
/// received every message.
pub(crate) const TAKEN: &str = "Lp-Taken";
/// Header: the worker's exit code, on its last output message.
pub(crate) const EXIT: &str = "Lp-Exit";
/// Header: on a task message, the parent's output credit total so far (as
/// on control messages).
pub(crate) const CREDIT: &str = "Lp-Credit";
/// Header: on a control message, stop this incarnation at once.
pub(crate) const KILL: &str = "Lp-Kill";
/// Header: on a join request, the worker index asked for.
pub(crate) const WANT: &str = "Lp-Want";
/// Header: on a join request, the token of a worker the parent started.
pub(crate) const TOKEN: &str = "Lp-Token";
/// Header: on a join request, the host the worker runs on.
pub(crate) const HOST: &str = "Lp-Host";
/// Header: on a join reply, why the join was refused.
pub(crate) const REFUSED: &str = "Lp-Refused";
/// Header: on a join reply, the settings of the worker (see `JoinReply`).
pub(crate) const SETTINGS: &str = "Lp-Settings";

/// The names of one pool's objects on the broker.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pool: String,
}

impl Names {
    /// Checks that `pool` can name subjects and streams: ASCII letters,
    /// digits, `-` and `_`, at most 64 characters.
    pub(crate) fn new(pool: &str) -> Result<Self, String> {
        let ok = !pool.is_empty()
            && pool.len() <= 64
            && pool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Names { pool: pool.into() })
        } else {
            Err(format!(
                "pool id {pool:?} cannot name broker subjects: use 1 to 64 ASCII letters, \
                 digits, '-' or '_'"
            ))
        }
    }

    pub(crate) fn pool(&self) -> &str {
        &self.pool
    }

    /// The work-queue stream of every task message of the pool.
    pub(crate) fn task_stream(&self) -> String {
        format!("LP_{}_TASK", self.pool)
    }

    /// The work-queue stream of every output message of the pool.
    pub(crate) fn output_stream(&self) -> String {
        format!("LP_{}_OUT", self.pool)
    }

    pub(crate) fn task_subjects(&self) -> String {
        format!("lp.{}.task.*", self.pool)
    }

    pub(crate) fn output_subjects(&self) -> String {
        format!("lp.{}.out.*", self.pool)
    }

    /// Worker `n`'s queue: its init, tasks and stop, in order.
    pub(crate) fn task_subject(&self, n: usize) -> String {
        format!("lp.{}.task.{n}", self.pool)
    }

    /// Worker `n`'s frames to the parent.
    pub(crate) fn output_subject(&self, n: usize) -> String {
        format!("lp.{}.out.{n}", self.pool)
    }

    /// Worker `n`'s pull consumer of its tasks, for incarnation `inc`.
    pub(crate) fn task_consumer(&self, n: usize, inc: u64) -> String {
        format!("w{n}-{inc:x}")
    }

    /// The parent's pull consumer of worker `n`'s outputs, for incarnation `inc`.
    pub(crate) fn output_consumer(&self, n: usize, inc: u64) -> String {
        format!("o{n}-{inc:x}")
    }

    /// Credits, pings and kills for worker `n` (core NATS, not persisted).
    pub(crate) fn control_subject(&self, n: usize) -> String {
        format!("lp.{}.ctl.{n}", self.pool)
    }

    /// Worker `n`'s heartbeats.
    pub(crate) fn heartbeat_subject(&self, n: usize) -> String {
        format!("lp.{}.hb.{n}", self.pool)
    }

    /// The parent's heartbeats: workers exit when they stop.
    pub(crate) fn owner_subject(&self) -> String {
        format!("lp.{}.owner", self.pool)
    }

    /// Where workers ask to join.
    pub(crate) fn join_subject(&self) -> String {
        format!("lp.{}.join", self.pool)
    }
}

/// A header's value parsed as a number.
pub(crate) fn header_u64(headers: Option<&async_nats::HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::Names;

    #[test]
    fn pool_ids_that_cannot_name_subjects_are_refused() {
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
        let n = Names::new("jobs_2-b").unwrap();
        assert_eq!(n.task_subject(3), "lp.jobs_2-b.task.3");
        assert_eq!(n.task_stream(), "LP_jobs_2-b_TASK");
    }
}
