//! The in-process test harness, `looppool::testing`, as a user's test
//! would use it.

use std::rc::Rc;
use std::sync::Mutex;

use looppool::testing::TestWorker;
use looppool::{BoxError, InitContext, StartError, TaskContext, Worker};

/// The shutdown hooks run so far: each worker's `times` and task count.
static SHUTDOWNS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Repeats a word; fails on an empty one, panics on "panic", and refuses
/// to start with a count of zero.
struct Repeater {
    times: usize,
    /// Not `Send`: handlers run on the worker's own thread.
    calls: std::cell::Cell<usize>,
}

impl Worker for Repeater {
    const NAME: &'static str = "repeater";
    type Init = usize;
    type Task = String;
    type Output = String;

    async fn init(times: usize, cx: InitContext<String>) -> Result<Self, BoxError> {
        if times == 0 {
            return Err("times must be positive".into());
        }
        let _ = cx.emitter().try_emit("ready".to_owned());
        Ok(Repeater {
            times,
            calls: std::cell::Cell::new(0),
        })
    }

    async fn handle(self: Rc<Self>, word: String, cx: TaskContext<String>) -> Result<(), BoxError> {
        self.calls.set(self.calls.get() + 1);
        match word.as_str() {
            "" => return Err("an empty word".into()),
            "panic" => panic!("asked to panic"),
            _ => {}
        }
        for _ in 0..self.times {
            // Yield between outputs: handlers run on a real event loop.
            tokio::task::yield_now().await;
            cx.emit(word.clone()).await?;
        }
        Ok(())
    }

    async fn shutdown(self: Rc<Self>) {
        SHUTDOWNS
            .lock()
            .unwrap()
            .push((self.times, self.calls.get()));
    }
}

#[tokio::test]
async fn runs_tasks_and_reports_their_failures() {
    let w = TestWorker::<Repeater>::start(3).await.unwrap();
    assert_eq!(w.run("hi".into()).await.unwrap(), ["hi", "hi", "hi"]);

    let err = w.run(String::new()).await.unwrap_err();
    assert_eq!(err.message(), "an empty word");
    assert!(!err.panicked());

    let err = w.run("panic".into()).await.unwrap_err();
    assert!(err.panicked());
    assert!(err.message().contains("asked to panic"), "{err}");

    // The worker lives on after a failure and a panic.
    assert_eq!(w.run("ok".into()).await.unwrap().len(), 3);
    assert_eq!(w.take_unsolicited().await, ["ready"]);
    assert_eq!(w.shutdown().await, 0);
    assert!(SHUTDOWNS.lock().unwrap().contains(&(3, 4)));
}

#[tokio::test]
async fn many_outputs_are_given_credits() {
    let w = TestWorker::<Repeater>::start(5000).await.unwrap();
    let word = "x".repeat(100);
    let outputs = w.run(word.clone()).await.unwrap();
    assert_eq!(outputs.len(), 5000);
    assert!(outputs.iter().all(|o| *o == word));
    assert_eq!(w.shutdown().await, 0);
}

#[tokio::test]
async fn an_init_error_is_a_start_error() {
    match TestWorker::<Repeater>::start(0).await {
        Err(StartError::Init { message, .. }) => assert_eq!(message, "times must be positive"),
        other => panic!("expected an init error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_dropped_worker_leaves_the_process_running() {
    let w = TestWorker::<Repeater>::start(1).await.unwrap();
    assert_eq!(w.run("a".into()).await.unwrap(), ["a"]);
    drop(w);
    // Were the worker to exit the process on the closed connection, this
    // test would end here with status 0 and no verdict.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let w = TestWorker::<Repeater>::start(1).await.unwrap();
    assert_eq!(w.run("b".into()).await.unwrap(), ["b"]);
    w.shutdown().await;
}
