//! The worker program of looppool's integration tests.

fn main() {
    looppool::worker_main!(looppool_tests::Probe, looppool_tests::Blob);
    eprintln!("test-worker: run me from a looppool pool");
    std::process::exit(2);
}
