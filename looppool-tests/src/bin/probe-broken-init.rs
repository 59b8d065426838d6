//! The tests' `Probe` worker built as a release whose initialiser always
//! fails (as one that cannot reach its database would): an upgrade to it
//! must stop and leave the old workers serving.

fn main() {
    // Read by `Probe::init`; set before the worker starts any thread.
    std::env::set_var(
        looppool_tests::FAIL_INIT_ENV,
        "this build's initialiser fails",
    );
    looppool::worker_main!(looppool_tests::Probe);
    eprintln!("probe-broken-init: run me from a looppool pool");
    std::process::exit(2);
}
