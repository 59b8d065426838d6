//! The README's first example, exactly as written there (with
//! `#[tokio::main]`): `.ci/run` builds it as a fresh crate too.

use looppool::{BoxError, InitContext, Pool, TaskContext, Worker};
use std::rc::Rc;

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
        cx.emit(2 * x).await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() {
    looppool::worker_main!(Doubler); // first line: a worker process runs its worker here
    let (pool, mut outputs) = Pool::<Doubler>::builder().workers(4).start().await.unwrap();
    assert_eq!(pool.call(21).await.unwrap(), 42);
    pool.submit(1).await.unwrap();
    println!("{:?}", outputs.next().await);
    pool.shutdown().await;
}
