//! The errors' texts and chains, as a report prints them.

use super::*;

/// `err` and its sources joined with ": ", as `anyhow`'s `{:#}`.
fn report(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[test]
fn start_errors_print_each_cause_once() {
    let config = StartError::from(BuildError::new("workers(0) leaves no worker"));
    assert_eq!(config.to_string(), "invalid pool configuration");
    assert_eq!(
        report(&config),
        "invalid pool configuration: workers(0) leaves no worker"
    );
    let spawn = StartError::Spawn {
        worker: 2,
        program: "/bin/nope".into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    };
    assert_eq!(spawn.to_string(), "cannot start worker 2 with /bin/nope");
    let text = report(&spawn);
    assert!(text.starts_with("cannot start worker 2 with /bin/nope: "));
    let cause = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
    assert_eq!(text.matches(cause.as_str()).count(), 1, "{text}");
}

#[test]
fn error_texts_are_lowercase_without_a_trailing_period() {
    let lost = WorkerLost::pool_killed(1);
    let task = TaskError {
        worker: 0,
        task: TaskId::new(0, 7),
        message: "boom".into(),
        panicked: false,
    };
    let texts = [
        StartError::Closed.to_string(),
        StartError::from(BuildError::new("x")).to_string(),
        SubmitError::new(SubmitErrorKind::Full, ()).to_string(),
        lost.to_string(),
        task.to_string(),
        CallError::<()>::NoReply {
            worker: 0,
            task: TaskId::new(0, 7),
        }
        .to_string(),
        TryNextError::Empty.to_string(),
        TryNextError::Ended.to_string(),
    ];
    for text in texts {
        let first = text.chars().next().unwrap();
        assert!(!first.is_uppercase(), "{text}");
        assert!(!text.ends_with('.'), "{text}");
    }
}

/// A task type with neither `Debug` nor `Clone`.
struct NotDebug;

fn refused() -> Result<(), CallError<NotDebug>> {
    Err(CallError::Submit(SubmitError::new(
        SubmitErrorKind::Closed,
        NotDebug,
    )))
}

fn with_question_mark() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    refused()?;
    Ok(())
}

#[test]
fn call_errors_need_no_debug_task() {
    let err = with_question_mark().unwrap_err();
    assert_eq!(err.to_string(), "call not sent: pool is closed");
    let call = refused().unwrap_err();
    assert!(format!("{call:?}").starts_with("Submit(SubmitError"));
    let CallError::Submit(submit) = call else {
        unreachable!()
    };
    let NotDebug = submit.into_inner();
}

#[test]
fn accessors_read_what_the_fields_hold() {
    let task = TaskError {
        worker: 3,
        task: TaskId::new(3, 9),
        message: "it broke".into(),
        panicked: true,
    };
    assert_eq!(task.worker(), 3);
    assert_eq!(task.task(), TaskId::new(3, 9));
    assert_eq!(task.message(), "it broke");
    assert!(task.panicked());
    let lost = WorkerLost::pool_killed(4);
    assert_eq!(lost.worker(), 4);
    assert_eq!(lost.pid(), 0);
    assert_eq!(lost.status(), ExitStatus::Unknown);
    assert_eq!(lost.cause(), &LossCause::PoolKilled);
}
