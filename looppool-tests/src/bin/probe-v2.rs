//! A worker program built from "other sources": its worker is named `probe`
//! like the tests' `Probe`, but its task type differs. A pool of `Probe`
//! pointed at it must refuse it at the handshake.

use std::rc::Rc;

use looppool::{BoxError, InitContext, TaskContext, Worker};
use serde::{Deserialize, Serialize};

/// The other build's task type.
#[derive(Debug, Serialize, Deserialize)]
enum Job {
    Triple(u64),
}

struct ProbeV2;

impl Worker for ProbeV2 {
    const NAME: &'static str = "probe";
    type Init = looppool_tests::ProbeInit;
    type Task = Job;
    type Output = u64;

    async fn init(_: looppool_tests::ProbeInit, _: InitContext<u64>) -> Result<Self, BoxError> {
        Ok(ProbeV2)
    }

    async fn handle(self: Rc<Self>, job: Job, cx: TaskContext<u64>) -> Result<(), BoxError> {
        let Job::Triple(x) = job;
        cx.emit(3 * x).await?;
        Ok(())
    }
}

fn main() {
    looppool::worker_main!(ProbeV2);
    eprintln!("probe-v2: run me from a looppool pool");
    std::process::exit(2);
}
