//! Panics in a worker: catching them around user code, their message, and
//! the hook that records where they happened.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::{AssertUnwindSafe, PanicHookInfo};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Polls a boxed future, turning a panic into an `Err` with its message.
pub(crate) struct CatchUnwind<F>(pub(crate) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = Pin::new(&mut self.0);
        match in_task(|| std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx)))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload))),
        }
    }
}

thread_local! {
    /// Where the last panic on this thread happened, recorded by the hook.
    static PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
    /// True while user code runs under a panic catcher that reports to the parent.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, user code under a catcher: a panic in it is a task's failure.
pub(crate) fn in_task<R>(f: impl FnOnce() -> R) -> R {
    let outer = IN_TASK.with(|t| t.replace(true));
    let r = f();
    IN_TASK.with(|t| t.set(outer));
    r
}

/// Records each panic's location so the failure sent to the parent names it.
/// Panics under a catcher are reported as task failures, which the parent
/// logs; any other panic (in background work) is handed to `forward` (the
/// log forwarding), or printed here when `forward` returns false.
pub(crate) fn install_hook(forward: fn(&PanicHookInfo<'_>) -> bool) {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_TASK.with(Cell::get) {
            let location = info.location().map(|l| l.to_string());
            PANIC_LOCATION.with(|cell| *cell.borrow_mut() = location);
        } else if !forward(info) {
            default(info);
        }
    }));
}

/// A panic's payload as text: the message of `panic!`, or a placeholder.
pub(crate) fn payload_text(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    }
}

/// A caught panic's message for the parent: its text and, when the hook
/// recorded it, where it happened.
pub(crate) fn panic_message(payload: Box<dyn Any + Send>) -> String {
    let text = payload_text(&*payload);
    match PANIC_LOCATION.with(|cell| cell.borrow_mut().take()) {
        Some(location) => format!("{text} (at {location})"),
        None => text,
    }
}
