//! `looppool::testing` leaves the test process alone: its panic hook, its
//! signal dispositions, its environment and its thread's name. One test in
//! this binary, as the panic hook is the process's.

use std::rc::Rc;
use std::sync::{Arc, Mutex};

use looppool::testing::TestWorker;
use looppool::{BoxError, InitContext, TaskContext, Worker};
use looppool_tests::sys;

struct Doubler;

impl Worker for Doubler {
    const NAME: &'static str = "doubler";
    type Init = ();
    type Task = u64;
    type Output = u64;

    async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> {
        Ok(Doubler)
    }

    async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
        assert_ne!(x, 0, "zero is not doubled");
        cx.emit(2 * x).await?;
        Ok(())
    }
}

#[test]
fn the_harness_leaves_the_test_process_alone() {
    let sigint = sys::disposition(libc::SIGINT);
    let sigterm = sys::disposition(libc::SIGTERM);
    let env: Vec<_> = std::env::vars_os().collect();
    let thread_name = std::thread::current().name().map(str::to_owned);

    // A hook that records every panic's message, as a test's own would.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let default = std::panic::take_hook();
    {
        let seen = seen.clone();
        std::panic::set_hook(Box::new(move |info| {
            seen.lock().unwrap().push(info.to_string());
        }));
    }

    // On this thread's own runtime, as `#[tokio::test]` runs.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let w = TestWorker::<Doubler>::start(()).await.unwrap();
            assert_eq!(w.run(21).await.unwrap(), [42]);
            let err = w.run(0).await.unwrap_err();
            assert!(err.panicked(), "{err}");
            assert_eq!(w.shutdown().await, 0);
        });

    // The handler's panic went through the test's hook like any other.
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("zero is not doubled")),
        "{:?}",
        seen.lock().unwrap()
    );
    // And a later failing assertion still reaches it, message and all.
    let failed = std::panic::catch_unwind(|| assert_eq!(1 + 1, 3, "arithmetic"));
    assert!(failed.is_err());
    let _ = std::panic::take_hook();
    std::panic::set_hook(default);
    let seen = seen.lock().unwrap();
    let last = seen.last().expect("the assertion's panic was recorded");
    assert!(
        last.contains("assertion `left == right` failed: arithmetic"),
        "{last}"
    );

    assert_eq!(sys::disposition(libc::SIGINT), sigint, "SIGINT changed");
    assert_eq!(sys::disposition(libc::SIGTERM), sigterm, "SIGTERM changed");
    assert_eq!(
        sigint,
        libc::SIG_DFL,
        "SIGINT was not the default to begin with"
    );
    let after: Vec<_> = std::env::vars_os().collect();
    assert_eq!(after, env, "the environment changed");
    assert_eq!(
        std::thread::current().name().map(str::to_owned),
        thread_name,
        "the thread was renamed"
    );
}
