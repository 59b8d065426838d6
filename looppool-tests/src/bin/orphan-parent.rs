//! A parent program for the no-orphans tests: starts a pool of the test
//! worker program given as its first argument, prints the workers' pids on
//! one line, then waits to be killed. With a broker URL as third argument,
//! its workers are local ones connected through that NATS broker plus one
//! remote worker (pool `orphans`), which must already be trying to join.

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
    let broker = std::env::args().nth(3);
    runtime.block_on(async {
        let (pool, _outputs) = match broker {
            None => looppool::Pool::<looppool_tests::Probe>::builder()
                .init_default()
                .program(program)
                .workers(workers)
                .name("orphans")
                .start()
                .await
                .expect("pool starts"),
            Some(url) => {
                looppool_nats::NatsPoolBuilder::<looppool_tests::Probe>::new(url, "orphans")
                    .init_default()
                    .program(program)
                    .local_workers(workers - 1)
                    .remote_workers(1)
                    .liveness(
                        std::time::Duration::from_millis(200),
                        std::time::Duration::from_millis(1000),
                    )
                    .start()
                    .await
                    .expect("pool starts")
            }
        };
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
