//! A parent process with a pool whose control socket is in a given
//! directory, for the control socket's tests: prints the socket's path,
//! then serves until it is killed. The tests kill it with SIGKILL (to leave
//! a stale socket) or run it as another user (to be refused by its peer
//! check).
//!
//! Usage: `control-parent <worker program> <control dir>`

fn main() {
    let mut args = std::env::args().skip(1);
    let program = args.next().expect("usage: control-parent <program> <dir>");
    let dir = args.next().expect("usage: control-parent <program> <dir>");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (pool, _outputs) = looppool::Pool::<looppool_tests::Probe>::builder()
            .init_default()
            .program(program)
            .workers(2)
            .name("control-parent")
            .control_socket(dir)
            .start()
            .await
            .expect("pool starts");
        let path = pool.control_socket().expect("a control socket");
        println!("{}", path.display());
        std::future::pending::<()>().await;
    });
}
