//! Requests: parsing a line, carrying it out on the pool, and the reply.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use serde_json::Value;

use super::snapshot::{Snapshot, WorkerState};
use crate::error::StartError;
use crate::supervisor::Supervisor;
use crate::task_id::TaskId;

/// A failed request: the error's `kind` (stable) and message (for people).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OpError {
    pub(super) kind: &'static str,
    pub(super) message: String,
}

impl OpError {
    pub(super) fn new(kind: &'static str, message: impl Into<String>) -> Self {
        OpError {
            kind,
            message: message.into(),
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the server acts on: the pool, reached without owning it. Not
/// generic, so that the server is compiled once rather than per output
/// type.
pub(super) trait Target: Send + Sync + 'static {
    fn snapshot(&self) -> Result<Snapshot, OpError>;
    fn resize(&self, workers: usize) -> BoxFuture<'_, Result<(), OpError>>;
    fn recycle(&self, worker: usize) -> Result<(), OpError>;
    fn cancel(&self, task: TaskId) -> Result<(), OpError>;
    fn rolling_restart(&self) -> BoxFuture<'_, Result<(), OpError>>;
}

/// Cancels a task as [`Pool::cancel`](crate::Pool::cancel) does: true when
/// its cancel is now under way. Made by the pool, which holds the
/// cancellation settings; it must not keep the pool alive.
pub(crate) type Cancel = Box<dyn Fn(TaskId) -> bool + Send + Sync>;

/// The pool's supervisor, held weakly: a pool dropped while a client is
/// connected still shuts down.
pub(super) struct SupTarget<O> {
    sup: Weak<Supervisor<O>>,
    cancel: Cancel,
}

impl<O> SupTarget<O> {
    pub(super) fn new(sup: &Arc<Supervisor<O>>, cancel: Cancel) -> Self {
        SupTarget {
            sup: Arc::downgrade(sup),
            cancel,
        }
    }

    fn sup(&self) -> Result<Arc<Supervisor<O>>, OpError> {
        self.sup
            .upgrade()
            .ok_or_else(|| OpError::new("closed", "the pool is gone"))
    }
}

impl<O: serde::de::DeserializeOwned + Send + 'static> Target for SupTarget<O> {
    fn snapshot(&self) -> Result<Snapshot, OpError> {
        let sup = self.sup()?;
        let active = sup.active.load(Ordering::Relaxed);
        // As `Pool::stats` makes it.
        let stats = crate::stats::collect(&sup.spec.pool_name, &sup.lanes, active, |i| sup.pid(i));
        let failure = sup.failure();
        let state = match (&failure, sup.is_stopping()) {
            (Some(_), _) => "failed",
            (None, true) => "stopping",
            (None, false) => "running",
        };
        Ok(Snapshot::new(
            stats,
            std::process::id(),
            state.to_owned(),
            failure,
            sup.lanes.len(),
            sup.lanes.first().map_or(0, |l| l.capacity()),
            |i| WorkerState::from_status(sup.lanes[i].status()),
        ))
    }

    fn resize(&self, workers: usize) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(async move {
            let sup = self.sup()?;
            sup.resize(workers).await.map_err(|e| match e {
                StartError::Config(e) => OpError::new("invalid", e.to_string()),
                StartError::Closed => OpError::new("closed", "the pool is stopping"),
                other => OpError::new("start_failed", other.to_string()),
            })
        })
    }

    fn recycle(&self, worker: usize) -> Result<(), OpError> {
        let sup = self.sup()?;
        let workers = sup.active.load(Ordering::SeqCst);
        if worker >= workers {
            return Err(OpError::new(
                "no_such_worker",
                format!("no worker {worker}: the pool has {workers}"),
            ));
        }
        let lane = &sup.lanes[worker];
        if lane.recycle_for(crate::RecycleReason::Requested) {
            return Ok(());
        }
        let state = WorkerState::from_status(lane.status());
        Err(OpError::new(
            "not_running",
            format!("worker {worker} is {}, not running", state.as_str()),
        ))
    }

    fn rolling_restart(&self) -> BoxFuture<'_, Result<(), OpError>> {
        Box::pin(async move {
            let sup = self.sup()?;
            sup.rolling_restart(None).await.map_err(|e| {
                let kind = match e.cause() {
                    StartError::Closed => "closed",
                    StartError::Config(_) => "unsupported",
                    _ => "restart_failed",
                };
                OpError::new(kind, format!("{e}: {}", e.cause()))
            })
        })
    }

    fn cancel(&self, task: TaskId) -> Result<(), OpError> {
        // Only to fail with `closed` once the pool is gone.
        drop(self.sup()?);
        if (self.cancel)(task) {
            return Ok(());
        }
        Err(OpError::new(
            "no_such_task",
            format!(
                "task {task} is not held: it ended, was never sent, or is already being cancelled"
            ),
        ))
    }
}

/// Carries out the request on `line` and returns the reply line (without
/// its newline). Never fails: a bad request gets an error reply.
pub(super) async fn handle(line: &[u8], target: &dyn Target) -> String {
    let (id, result) = match parse(line) {
        Ok((id, request)) => (id, run(request, target).await),
        Err((id, e)) => (id, Err(e)),
    };
    reply(id, result)
}

/// A reply, its fields in the order they are written.
#[derive(serde::Serialize)]
struct Reply<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Value>,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<Snapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorOut<'a>>,
}

#[derive(serde::Serialize)]
struct ErrorOut<'a> {
    kind: &'a str,
    message: &'a str,
}

/// The reply line for a request with `id` that ended in `result`.
pub(super) fn reply(id: Option<Value>, result: Result<Option<Snapshot>, OpError>) -> String {
    let (snapshot, error) = match result {
        Ok(snapshot) => (snapshot, None),
        Err(e) => (None, Some(e)),
    };
    let reply = Reply {
        id,
        ok: error.is_none(),
        snapshot,
        error: error.as_ref().map(|e| ErrorOut {
            kind: e.kind,
            message: &e.message,
        }),
    };
    // Serializing plain data with string keys cannot fail.
    serde_json::to_string(&reply).unwrap_or_else(|_| r#"{"ok":false}"#.to_owned())
}

/// A well-formed request.
#[derive(Debug, PartialEq)]
enum Request {
    Snapshot,
    Resize(usize),
    Recycle(usize),
    Cancel(TaskId),
    RollingRestart,
}

/// The request on `line`, with its id; or the error to reply, with the id
/// when it could be read.
fn parse(line: &[u8]) -> Result<(Option<Value>, Request), (Option<Value>, OpError)> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        (
            None,
            OpError::new("bad_json", format!("not a JSON value: {e}")),
        )
    })?;
    let Value::Object(mut fields) = value else {
        return Err((
            None,
            OpError::new("bad_request", "a request is a JSON object"),
        ));
    };
    let id = fields.remove("id");
    let fail = |kind, message: String| Err((id.clone(), OpError::new(kind, message)));
    let op = match fields.get("op") {
        Some(Value::String(op)) => op.as_str(),
        Some(_) => return fail("bad_request", "\"op\" must be a string".into()),
        None => return fail("bad_request", "missing \"op\"".into()),
    };
    let index = |name: &str| match fields.get(name) {
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("\"{name}\" must be a non-negative integer, not {v}")),
        None => Err(format!("{op:?} needs \"{name}\"")),
    };
    let request = match op {
        "snapshot" => Request::Snapshot,
        "resize" => match index("workers") {
            Ok(n) => Request::Resize(n),
            Err(e) => return fail("bad_request", e),
        },
        "recycle" => match index("worker") {
            Ok(n) => Request::Recycle(n),
            Err(e) => return fail("bad_request", e),
        },
        "rolling_restart" => Request::RollingRestart,
        "cancel" => match fields.get("task").map(task_id) {
            Some(Ok(id)) => Request::Cancel(id),
            Some(Err(e)) => return fail("bad_request", e),
            None => return fail("bad_request", "\"cancel\" needs \"task\"".into()),
        },
        other => {
            return fail(
                "unknown_op",
                format!(
                    "unknown op {other:?}: expected snapshot, resize, recycle, \
                     rolling_restart or cancel"
                ),
            )
        }
    };
    Ok((id, request))
}

/// A task id in a request: `"w1#42"`, as [`TaskId`]'s `Display` writes it
/// (an attempt suffix is allowed and ignored), or `{"worker":1,"seq":42}`.
fn task_id(value: &Value) -> Result<TaskId, String> {
    let bad = || {
        format!("\"task\" must be \"w<worker>#<seq>\" or {{\"worker\":N,\"seq\":N}}, not {value}")
    };
    let (worker, seq) = match value {
        Value::String(s) => {
            let s = s.split(' ').next().unwrap_or_default();
            let (w, n) = s
                .strip_prefix('w')
                .and_then(|s| s.split_once('#'))
                .ok_or_else(bad)?;
            let worker: u16 = w.parse().map_err(|_| bad())?;
            (worker, n.parse().map_err(|_| bad())?)
        }
        Value::Object(o) => {
            let field = |k: &str| o.get(k).and_then(Value::as_u64);
            let worker = field("worker").and_then(|w| u16::try_from(w).ok());
            (worker.ok_or_else(bad)?, field("seq").ok_or_else(bad)?)
        }
        _ => return Err(bad()),
    };
    // A pool has at most 4,096 workers: an index past a `u16` names none.
    Ok(TaskId::new(u32::from(worker), seq))
}

async fn run(request: Request, target: &dyn Target) -> Result<Option<Snapshot>, OpError> {
    match request {
        Request::Snapshot => target.snapshot().map(Some),
        Request::Resize(n) => target.resize(n).await.map(|()| None),
        Request::Recycle(i) => target.recycle(i).map(|()| None),
        Request::Cancel(id) => target.cancel(id).map(|()| None),
        Request::RollingRestart => target.rolling_restart().await.map(|()| None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(line: &str) -> Result<Request, &'static str> {
        parse(line.as_bytes())
            .map(|(_, r)| r)
            .map_err(|(_, e)| e.kind)
    }

    #[test]
    fn parses_requests_and_refuses_malformed_ones() {
        assert_eq!(kind(r#"{"op":"snapshot"}"#), Ok(Request::Snapshot));
        assert_eq!(
            kind(r#"{"op":"resize","workers":3}"#),
            Ok(Request::Resize(3))
        );
        assert_eq!(
            kind(r#"{"op":"recycle","worker":0}"#),
            Ok(Request::Recycle(0))
        );
        assert_eq!(
            kind(r#"{"op":"cancel","task":"w1#42"}"#),
            Ok(Request::Cancel(TaskId::new(1, 42)))
        );
        assert_eq!(
            kind(r#"{"op":"cancel","task":"w0#3 (attempt 2)"}"#),
            Ok(Request::Cancel(TaskId::new(0, 3)))
        );
        assert_eq!(
            kind(r#"{"op":"cancel","task":{"worker":2,"seq":9}}"#),
            Ok(Request::Cancel(TaskId::new(2, 9)))
        );
        for bad in [
            r#"{"op":"cancel"}"#,
            r#"{"op":"cancel","task":1}"#,
            r#"{"op":"cancel","task":"1#2"}"#,
            r#"{"op":"cancel","task":"w1#"}"#,
            r#"{"op":"cancel","task":"w-1#2"}"#,
            r#"{"op":"cancel","task":{"worker":1}}"#,
            r#"{"op":"cancel","task":{"worker":5000000000,"seq":1}}"#,
            r#"{"op":"cancel","task":{"worker":65536,"seq":1}}"#,
            r#"{"op":"cancel","task":"w65536#1"}"#,
        ] {
            assert_eq!(kind(bad), Err("bad_request"), "{bad}");
        }
        assert_eq!(kind("{"), Err("bad_json"));
        assert_eq!(kind("[1]"), Err("bad_request"));
        assert_eq!(kind(r#"{"op":7}"#), Err("bad_request"));
        assert_eq!(kind(r#"{"op":"resize","workers":-1}"#), Err("bad_request"));
        assert_eq!(kind(r#"{"op":"resize","workers":"2"}"#), Err("bad_request"));
        assert_eq!(kind(r#"{"op":"recycle"}"#), Err("bad_request"));
        assert_eq!(kind(r#"{"op":"explode"}"#), Err("unknown_op"));
    }

    #[test]
    fn replies_echo_the_id() {
        let (id, _) = parse(br#"{"op":"nope","id":"x"}"#).unwrap_err();
        let line = reply(id, Err(OpError::new("unknown_op", "m")));
        assert_eq!(
            line,
            r#"{"id":"x","ok":false,"error":{"kind":"unknown_op","message":"m"}}"#
        );
        assert_eq!(
            reply(Some(Value::from(3)), Ok(None)),
            r#"{"id":3,"ok":true}"#
        );
    }
}
