//! A parent program for the no-orphans test: starts a pool of the test
//! worker program given as its first argument, prints the workers' pids on
//! one line, then waits to be killed.

fn main() {
    let program = std::env::args()
        .nth(1)
        .expect("usage: orphan-parent <worker program> [workers]");
    let workers: usize = std::env::args()
        .nth(2)
        .map_or(3, |n| n.parse().expect("a worker count"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (pool, _outputs) = looppool::Pool::<looppool_tests::Probe>::builder()
            .program(program)
            .workers(workers)
            .name("orphans")
            .start()
            .await
            .expect("pool starts");
        // Keep the workers busy, so they are not merely waiting for input.
        for w in 0..workers {
            pool.submit_to(
                w,
                looppool_tests::Job::Sleep {
                    ms: 600_000,
                    value: 0,
                },
            )
            .await
            .unwrap();
        }
        let pids: Vec<String> = pool
            .pids()
            .into_iter()
            .flatten()
            .map(|p| p.to_string())
            .collect();
        println!("{}", pids.join(" "));
        std::future::pending::<()>().await;
    });
}
