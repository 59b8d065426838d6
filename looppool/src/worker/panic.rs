//! Panics in a worker: catching them around user code, their message, and
//! the hook that records where they happened.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::panic::AssertUnwindSafe;
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

pub(crate) fn in_task<R>(f: impl FnOnce() -> R) -> R {
    let outer = IN_TASK.with(|t| t.replace(true));
    let r = f();
    IN_TASK.with(|t| t.set(outer));
    r
}

/// Records each panic's location so the failure sent to the parent names it.
/// Panics under a catcher are reported as task failures, which the parent
/// logs; any other panic (in background work) is forwarded to the parent's
/// log, or printed here when forwarding is off.
pub(crate) fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_TASK.with(Cell::get) {
            let location = info.location().map(|l| l.to_string());
            PANIC_LOCATION.with(|cell| *cell.borrow_mut() = location);
        } else if !super::logging::forward_panic(info) {
            default(info);
        }
    }));
}

pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_owned()
    };
    match PANIC_LOCATION.with(|cell| cell.borrow_mut().take()) {
        Some(location) => format!("{text} (at {location})"),
        None => text,
    }
}
