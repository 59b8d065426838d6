//! The built-in connector: each worker a child process of this one, joined
//! over a socketpair whose far end the child finds as descriptor 3.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::event::ExitStatus;
use crate::sys;
use crate::transport::{self, ConnectFuture, Connection, Connector, Link, Peer};
use crate::worker::process::{BLOBS_ENV, MEMORY_ENV, SIGNALS_ENV, WORKER_ENV};

/// Starts workers as child processes that die with this process.
#[derive(Debug, Clone)]
pub(crate) struct LocalProcesses {
    /// The program to execute; `/proc/self/exe` for this very executable.
    program: PathBuf,
    /// Whether `program` was named by the caller, not this executable.
    named: bool,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    worker_name: &'static str,
    /// The worker's Rust type, as `worker_main!` lists it.
    worker_type: String,
    /// The pool's name, for process titles; `None` leaves titles alone.
    title_pool: Option<String>,
    /// The limit on each worker's data segment, in bytes.
    memory_limit: Option<u64>,
    /// The CPUs each worker may run on, if the pool chose them.
    worker_cpus: Option<Vec<usize>>,
}

/// How a local pool starts its workers.
#[derive(Debug)]
pub(crate) struct LocalOptions {
    /// The program to execute, or `None` for this very executable.
    pub(crate) program: Option<PathBuf>,
    pub(crate) args: Vec<OsString>,
    pub(crate) worker_name: &'static str,
    /// The worker's Rust type, as `worker_main!` lists it.
    pub(crate) worker_type: String,
    pub(crate) pool_name: String,
    pub(crate) inherit_signals: bool,
    pub(crate) titles: bool,
    /// The statsd address and prefix the workers report to.
    pub(crate) statsd: Option<(String, String)>,
    /// The limit on each worker's data segment, in bytes.
    pub(crate) memory_limit: Option<u64>,
    /// The CPUs each worker may run on, if the pool chose them.
    pub(crate) worker_cpus: Option<Vec<usize>>,
}

impl LocalProcesses {
    pub(crate) fn new(options: LocalOptions) -> Self {
        // Every local worker gets a blob socket as descriptor 4.
        let mut env: Vec<(OsString, OsString)> = vec![
            (WORKER_ENV.into(), options.worker_name.into()),
            (BLOBS_ENV.into(), "4".into()),
        ];
        if options.inherit_signals {
            env.push((SIGNALS_ENV.into(), "inherit".into()));
        }
        if let Some((addr, prefix)) = &options.statsd {
            env.push((
                crate::protocol::report::STATSD_ENV.into(),
                format!("{addr} {prefix}").into(),
            ));
        }
        if let Some(bytes) = options.memory_limit {
            env.push((MEMORY_ENV.into(), bytes.to_string().into()));
        }
        LocalProcesses {
            named: options.program.is_some(),
            // /proc/self/exe names the running image even if the file was replaced.
            program: options
                .program
                .unwrap_or_else(|| PathBuf::from("/proc/self/exe")),
            args: options.args,
            env,
            worker_name: options.worker_name,
            worker_type: options.worker_type,
            title_pool: options.titles.then_some(options.pool_name),
            memory_limit: options.memory_limit,
            worker_cpus: options.worker_cpus,
        }
    }

    /// The limit on each worker's data segment, if the pool set one.
    pub(crate) fn memory_limit(&self) -> Option<u64> {
        self.memory_limit
    }

    /// What a worker program needs in order to become a worker, for
    /// messages about one that did not.
    pub(crate) fn worker_main_hint(&self) -> String {
        format!(
            "put looppool::worker_main!({}) as the first line of its main (a #[tokio::main] \
             one too), or point the pool at a worker program with .program(...)",
            self.worker_type
        )
    }

    /// The program the workers run.
    pub(crate) fn program(&self) -> &Path {
        &self.program
    }

    /// The same workers, run from `program` (for an upgrade).
    pub(crate) fn with_program(&self, program: PathBuf) -> Self {
        LocalProcesses {
            program,
            named: true,
            ..self.clone()
        }
    }

    /// The title `ps` shows: `<program>: <pool> worker <index>`.
    fn title(&self, pool: &str, index: usize) -> String {
        let program = if self.named {
            self.program
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        } else {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        }
        .unwrap_or_else(|| "looppool".into());
        format!("{program}: {pool} worker {index}")
    }

    fn command(&self, index: usize) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // Its own process group, so that the processes it starts can be
            // killed with it (see `WorkerProcess`).
            .process_group(0);
        if let Some(pool) = &self.title_pool {
            cmd.arg0(self.title(pool, index));
        }
        cmd
    }

    /// Spawns worker `index` with its end of a new socketpair, and of a
    /// blob socket.
    async fn spawn(&self, index: usize) -> std::io::Result<Link> {
        let (parent_end, child_end) = transport::socketpair()?;
        let (parent_blobs, child_blobs) = transport::blobs::pair()?;
        let mut cmd = self.command(index);
        // The command owns the child's ends and closes them once the child
        // has its copies, so that its ends of the sockets are the only ones.
        sys::pass_connection(&mut cmd, child_end.into(), child_blobs);
        if let Some(bytes) = self.memory_limit {
            sys::limit_memory(&mut cmd, bytes);
        }
        if let Some(cpus) = &self.worker_cpus {
            sys::restrict_cpus(&mut cmd, cpus);
        }
        let mut child = sys::spawn_tied_child(cmd).await?;
        match Connection::unix_with_blobs(parent_end, parent_blobs) {
            Ok(connection) => Ok(Link {
                connection,
                peer: Box::new(WorkerProcess {
                    child,
                    reaped: false,
                }),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e)
            }
        }
    }

    /// Why a worker that closed its connection before the handshake ended
    /// with `status`, with what to change.
    pub(crate) fn early_exit_reason(&self, status: Option<ExitStatus>) -> String {
        use crate::worker::process::{EXIT_INIT_FAILED, EXIT_UNKNOWN_WORKER};
        let program = self.program.display();
        let worker = self.worker_name;
        let worker_type = &self.worker_type;
        let status_text = status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string());
        match status {
            Some(ExitStatus::Code(EXIT_UNKNOWN_WORKER)) => format!(
                "{program} does not know a worker named {worker:?}: list {worker_type} in looppool::worker_main! ({status_text})",
            ),
            Some(ExitStatus::Code(EXIT_INIT_FAILED)) => {
                format!("the initialiser failed ({status_text})")
            }
            _ => format!(
                "{program} exited before the handshake ({status_text}) instead of becoming worker \
                 {worker:?}: {}",
                self.worker_main_hint(),
            ),
        }
    }
}

/// A local worker process, the leader of a process group of its own. The
/// processes it starts, and theirs, are in that group unless they leave
/// it; when the worker ends, however it ends, they are killed with it.
///
/// The group is killed only while the worker is unreaped: until then its
/// pid, which is the group's id, names no other process and no other group.
#[derive(Debug)]
struct WorkerProcess {
    child: std::process::Child,
    reaped: bool,
}

impl WorkerProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Peer for WorkerProcess {
    fn kill(&mut self) {
        if !self.reaped {
            sys::kill_process_group(self.pid());
        }
        let _ = self.child.kill();
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if !self.reaped {
            if !sys::has_exited(self.pid())? {
                return Ok(None);
            }
            // Exited but not reaped: kill what it left behind, then reap.
            sys::kill_process_group(self.pid());
        }
        let status = self.child.try_wait()?;
        self.reaped |= status.is_some();
        Ok(status.map(ExitStatus::from))
    }

    fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if !self.reaped {
            sys::kill_process_group(self.pid());
        }
        let status = self.child.wait()?;
        self.reaped = true;
        Ok(ExitStatus::from(status))
    }

    fn process_id(&self) -> Option<u32> {
        Some(self.pid())
    }
}

impl Connector for LocalProcesses {
    fn connect(&self, index: usize) -> ConnectFuture<'_> {
        Box::pin(self.spawn(index))
    }

    fn describe(&self) -> String {
        self.program.display().to_string()
    }
}
