//! Checking a builder's settings before a pool starts: each refusal says
//! what to change.

use super::{
    PoolBuilder, DEFAULT_MAX_RESULT_BYTES, DEFAULT_PER_WORKER, MAX_MEMORY_LIMIT, MIN_MEMORY_LIMIT,
};
use crate::error::BuildError;
use crate::worker::Worker;

impl<W: Worker> PoolBuilder<W> {
    /// Checks the settings other than the sizes: frame limit, name,
    /// program, heartbeat, recycling and timeouts.
    fn check_settings(&self) -> Result<(), BuildError> {
        if self.max_frame < 1024 {
            return Err(BuildError::new(format!(
                "max_frame({}) is below the 1024-byte minimum; use at least 1024",
                self.max_frame
            )));
        }
        if self.max_frame > u32::MAX as usize {
            return Err(BuildError::new(format!(
                "max_frame({}) is above 4 GiB - 1; use at most {}",
                self.max_frame,
                u32::MAX
            )));
        }
        if self.name.is_empty() || self.name.contains('\0') {
            return Err(BuildError::new(
                "the pool name must be non-empty and contain no NUL byte",
            ));
        }
        if let Some(program) = &self.program {
            if !program.is_file() {
                return Err(BuildError::new(format!(
                    "worker program {} does not exist or is not a file; pass the path of a \
                     program whose main starts with looppool::worker_main!({}) (in tests, \
                     env!(\"CARGO_BIN_EXE_<name>\") names a binary of the package)",
                    program.display(),
                    crate::worker::short_type_name::<W>()
                )));
            }
        }
        if let Some((interval, timeout)) = self.tuning.heartbeat {
            if interval.is_zero() || timeout < interval {
                return Err(BuildError::new(format!(
                    "heartbeat({interval:?}, {timeout:?}) needs a non-zero interval and a timeout of at least one interval"
                )));
            }
        }
        if self.frame_timeout.is_zero() {
            return Err(BuildError::new(
                "frame_timeout(0) would cut every frame that takes two reads; use a few seconds",
            ));
        }
        if self.retries > crate::TaskId::MAX_ATTEMPT {
            return Err(BuildError::new(format!(
                "retry_lost({}) is above the {} attempts a task id can tell apart; use at most {}",
                self.retries,
                crate::TaskId::MAX_ATTEMPT,
                crate::TaskId::MAX_ATTEMPT
            )));
        }
        if self.tuning.recycle_tasks == Some(0) {
            return Err(BuildError::new(
                "recycle_after_tasks(0) would recycle workers before any task; use at least 1",
            ));
        }
        if self.connector.is_some() && self.recycle_rss.is_some() {
            return Err(BuildError::new(
                "recycle_above_memory samples local processes by pid and cannot watch workers \
                 reached through a connector; recycle them by task count \
                 (recycle_after_tasks) instead",
            ));
        }
        self.check_memory_limit()?;
        self.check_worker_cpus()?;
        if self.start_timeout.is_zero() {
            return Err(BuildError::new(
                "start_timeout(0) leaves no time for a worker to start; use a positive duration",
            ));
        }
        if self.task_timeout.is_some_and(|t| t.is_zero()) {
            return Err(BuildError::new(
                "task_timeout(0) would fail every task; use a positive duration",
            ));
        }
        Ok(())
    }

    /// Checks `worker_cpus`: a set the kernel can hold, with a CPU this
    /// process may use, for local workers.
    fn check_worker_cpus(&self) -> Result<(), BuildError> {
        let Some(cpus) = &self.worker_cpus else {
            return Ok(());
        };
        if cpus.is_empty() {
            return Err(BuildError::new(
                "worker_cpus([]) leaves the workers no CPU to run on; name at least one, or leave it unset",
            ));
        }
        if let Some(&cpu) = cpus.iter().find(|&&c| c >= crate::sys::MAX_CPUS) {
            return Err(BuildError::new(format!(
                "worker_cpus names CPU {cpu}, past the kernel's limit of {} CPUs in a set",
                crate::sys::MAX_CPUS
            )));
        }
        if self.connector.is_some() {
            return Err(BuildError::new(
                "worker_cpus is set on local processes as they start and cannot place \
                 workers reached through a connector; place them where they are started",
            ));
        }
        // Where the kernel does not say, a set it cannot honour fails each
        // worker's start instead (`StartError::Spawn`, "Invalid argument").
        if let Some(online) = crate::sys::online_cpus() {
            if !cpus.iter().any(|c| online.contains(c)) {
                return Err(BuildError::new(format!(
                    "worker_cpus({cpus:?}) names no CPU that is online (online: {online:?})"
                )));
            }
        }
        Ok(())
    }

    /// Checks `memory_limit` alone and with the settings it combines with.
    fn check_memory_limit(&self) -> Result<(), BuildError> {
        let Some(limit) = self.memory_limit else {
            return Ok(());
        };
        if limit < MIN_MEMORY_LIMIT {
            return Err(BuildError::new(format!(
                "memory_limit({limit}) is below the 32 MiB ({MIN_MEMORY_LIMIT} bytes) a worker \
                 needs for its runtime; use at least {MIN_MEMORY_LIMIT}"
            )));
        }
        if limit > MAX_MEMORY_LIMIT {
            return Err(BuildError::new(format!(
                "memory_limit({limit}) is above the 256 TiB address space of a process, so it \
                 would limit nothing; use at most {MAX_MEMORY_LIMIT}, or leave it unset"
            )));
        }
        if self.connector.is_some() {
            return Err(BuildError::new(
                "memory_limit is set on local processes as they start and cannot limit \
                 workers reached through a connector; limit them where they are started",
            ));
        }
        if let Some(recycle) = self.recycle_rss.filter(|&r| r >= limit) {
            return Err(BuildError::new(format!(
                "recycle_above_memory({recycle}) is not below memory_limit({limit}): workers \
                 would meet the hard limit before they are recycled; recycle below the limit \
                 (say at three quarters of it)"
            )));
        }
        Ok(())
    }

    /// Checks the settings; returns the number of workers, the most
    /// workers, each worker's task slots and output credits, and the bytes
    /// one credit covers.
    pub(super) fn validate(&self) -> Result<(usize, usize, u32, u32, u64), BuildError> {
        let workers = match self.workers {
            Some(0) => {
                return Err(BuildError::new(
                    "a pool needs at least one worker; workers(0) was given",
                ))
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, usize::from),
        };
        if workers > 4096 {
            return Err(BuildError::new(format!(
                "workers({workers}) is more than the 4096 a pool supports; use at most 4096"
            )));
        }
        let per_worker = |what: &str, total: Option<usize>| -> Result<u32, BuildError> {
            let total = total.unwrap_or(DEFAULT_PER_WORKER * workers);
            if total < workers {
                return Err(BuildError::new(format!(
                    "{what}({total}) is smaller than the number of workers ({workers}): \
                     each worker needs room for at least one; raise {what} or lower workers"
                )));
            }
            u32::try_from(total / workers)
                .ok()
                .filter(|&n| n <= 1 << 24)
                .ok_or_else(|| {
                    BuildError::new(format!(
                        "{what}({total}) allows more than 2^24 per worker; lower {what} or raise workers"
                    ))
                })
        };
        let tasks = per_worker("max_tasks", self.max_tasks)?;
        let results = per_worker("max_results", self.max_results)?;
        let result_bytes = self.max_result_bytes.unwrap_or(DEFAULT_MAX_RESULT_BYTES);
        if result_bytes < workers {
            return Err(BuildError::new(format!(
                "max_result_bytes({result_bytes}) is smaller than the number of workers \
                 ({workers}): each worker needs room for at least one byte"
            )));
        }
        // At least a byte per credit: below that, max_results is the bound.
        let credit_bytes = ((result_bytes / workers) as u64 / u64::from(results)).max(1);
        self.check_settings()?;
        self.observe.validate()?;
        let max_workers = self.max_workers.unwrap_or((workers * 4).max(16)).min(4096);
        if max_workers < workers {
            return Err(BuildError::new(format!(
                "max_workers({max_workers}) is smaller than workers({workers}); raise max_workers"
            )));
        }
        Ok((workers, max_workers, tasks, results, credit_bytes))
    }
}
