//! The worker program of looppool's integration tests.

fn main() {
    // Started as a worker that joins through a NATS broker.
    looppool_nats::run_if_remote::<looppool_tests::Probe>();
    looppool_nats::run_if_remote::<looppool_tests::Blob>();
    looppool_nats::run_if_remote::<looppool_tests::shm::Shm>();
    looppool::worker_main!(
        looppool_tests::Probe,
        looppool_tests::Blob,
        looppool_tests::Brittle,
        looppool_tests::shm::Shm
    );
    eprintln!("test-worker: run me from a looppool pool");
    std::process::exit(2);
}
