//! The public API's conveniences: init values that must be given, errors
//! that read well in reports and travel with `?`, and `try_next` telling an
//! empty stream from an ended one.

use std::rc::Rc;
use std::time::Duration;

use looppool::{
    BoxError, CallError, InitContext, Output, Pool, StartError, TaskContext, TryNextError, Worker,
};
use looppool_tests::{brittle_pool, probe_pool, report, Fragile, Job, Probe, ProbeInit};
use serde::{Deserialize, Serialize};

/// An init value with no `Default`: a worker must be told what it is.
#[derive(Serialize, Deserialize)]
struct Settings {
    endpoint: String,
}

struct Configured;

impl Worker for Configured {
    const NAME: &'static str = "configured";
    type Init = Settings;
    type Task = u64;
    type Output = u64;

    async fn init(settings: Settings, _: InitContext<u64>) -> Result<Self, BoxError> {
        if settings.endpoint.is_empty() {
            return Err("no endpoint".into());
        }
        Ok(Configured)
    }

    async fn handle(self: Rc<Self>, _: u64, _: TaskContext<u64>) -> Result<(), BoxError> {
        Ok(())
    }
}

fn assert_forgotten_init(err: &StartError, worker: &str) {
    let StartError::Config(e) = err else {
        panic!("expected a configuration error, got {err:?}")
    };
    let text = e.to_string();
    for part in [".init(value)", ".init_default()", worker, "is not `()`"] {
        assert!(text.contains(part), "{text:?} does not say {part:?}");
    }
    assert_eq!(report(err), format!("invalid pool configuration: {text}"));
}

#[tokio::test]
async fn an_init_type_without_default_must_be_given() {
    // This compiles although `Settings` has no `Default`; forgetting `.init`
    // is refused before any process starts.
    let err = Pool::<Configured>::builder()
        .program("/bin/true")
        .workers(1)
        .start()
        .await
        .unwrap_err();
    assert_forgotten_init(&err, "\"configured\"");
    // Given, the pool goes on to start its workers (which fail here, as
    // `true` is no worker program: the init check passed).
    let err = Pool::<Configured>::builder()
        .program("/bin/true")
        .workers(1)
        .init(Settings {
            endpoint: "http://localhost".into(),
        })
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, StartError::Handshake { .. }), "{err:?}");
}

#[tokio::test]
async fn a_forgotten_init_is_not_replaced_by_a_default() {
    let err = Pool::<Probe>::builder()
        .program(env!("CARGO_BIN_EXE_test-worker"))
        .workers(1)
        .start()
        .await
        .unwrap_err();
    assert_forgotten_init(&err, "\"probe\"");

    // `init_default` opts in; `init` gives the value.
    let (pool, _outputs) = Pool::<Probe>::builder()
        .program(env!("CARGO_BIN_EXE_test-worker"))
        .workers(1)
        .init_default()
        .start()
        .await
        .unwrap();
    assert_eq!(pool.call(Job::Double(4)).await.unwrap(), 8);
    pool.shutdown().await;
    let (pool, _outputs) = probe_pool!()
        .workers(1)
        .init(ProbeInit {
            offset: 100,
            ..ProbeInit::default()
        })
        .start()
        .await
        .unwrap();
    assert_eq!(pool.call(Job::Double(4)).await.unwrap(), 108);
    pool.shutdown().await;
}

#[tokio::test]
async fn a_unit_init_needs_no_init_call() {
    let (pool, _outputs) = brittle_pool!().workers(1).start().await.unwrap();
    let value = Fragile {
        value: 5,
        panic: false,
    };
    let echoed = pool
        .call(looppool_tests::BrittleJob::Echo(value))
        .await
        .unwrap();
    assert_eq!(echoed.value, 5);
    pool.shutdown().await;
}

/// What a program does with `?`: any task type goes into a boxed error.
async fn fail_through_question_mark(
    pool: &Pool<Probe>,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    Ok(pool.call(Job::Fail("no luck".into())).await?)
}

#[tokio::test]
async fn call_errors_travel_with_question_mark_and_read_once() {
    let (pool, _outputs) = probe_pool!().workers(1).start().await.unwrap();
    let err = fail_through_question_mark(&pool).await.unwrap_err();
    let call = err.downcast_ref::<CallError<Job>>().expect("a CallError");
    let CallError::Task(task) = call else {
        panic!("{call:?}")
    };
    assert_eq!(task.worker(), 0);
    assert!(!task.panicked());
    assert!(task.message().contains("no luck"), "{}", task.message());
    assert_eq!(report(err.as_ref()).matches("no luck").count(), 1);
    pool.shutdown().await;
}

#[tokio::test]
async fn try_next_tells_empty_from_ended() {
    let (pool, mut outputs) = probe_pool!().workers(1).start().await.unwrap();
    assert_eq!(outputs.try_next().err(), Some(TryNextError::Empty));
    pool.submit(Job::Double(21)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let item = loop {
        match outputs.try_next() {
            Ok(item) => break item,
            Err(TryNextError::Empty) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(matches!(item, Output::Value { value: 42, .. }), "{item:?}");
    assert_eq!(outputs.try_next().err(), Some(TryNextError::Empty));
    pool.shutdown().await;
    // Once the pool is down and every output taken, the stream has ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match outputs.try_next() {
            Err(TryNextError::Ended) => break,
            Err(TryNextError::Empty) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(outputs.next().await.is_none());
}
