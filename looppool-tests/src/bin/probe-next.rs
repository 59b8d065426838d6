//! The tests' `Probe` worker built as another program, as a new release of
//! a worker program would be: an upgrade's target.

fn main() {
    looppool::worker_main!(looppool_tests::Probe);
    eprintln!("probe-next: run me from a looppool pool");
    std::process::exit(2);
}
