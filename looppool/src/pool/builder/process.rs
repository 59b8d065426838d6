//! The builder's settings for the worker processes themselves: the limits
//! and placement the kernel enforces on each, set before it executes.

use super::PoolBuilder;
use crate::worker::Worker;

impl<W: Worker> PoolBuilder<W> {
    /// Limits each worker's memory to `bytes`, enforced by the kernel: a
    /// worker whose allocations pass it dies at once, and its tasks are
    /// reported lost with [`LossCause::OutOfMemory`](crate::LossCause::OutOfMemory);
    /// it is replaced under the restart policy. Default: no limit. At least
    /// 32 MiB, for the worker's runtime.
    ///
    /// The limit is the worker's `RLIMIT_DATA`, set before it executes: its
    /// heap, anonymous private mappings and writable data, counted when
    /// allocated, touched or not (its resident memory, which
    /// `recycle_above_memory` samples, is at most that plus its code and
    /// stack). An allocation past it fails, and Rust aborts the process
    /// ("memory allocation of N bytes failed"); the worker catches that
    /// abort and exits with a code the pool reads as out of memory. The
    /// [failure semantics](crate#out-of-memory) say exactly when a worker's
    /// end is reported so.
    ///
    /// With [`recycle_above_memory`](Self::recycle_above_memory) the two
    /// work as a soft and a hard limit: a worker that grows past the
    /// recycling threshold is drained and replaced with nothing lost; one
    /// whose task keeps allocating meets the hard limit and loses its
    /// tasks. The recycling threshold must therefore be below this limit.
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    /// Lets each worker run only on the CPUs `cpus` (numbered as the
    /// kernel numbers them, from 0), set before it executes, as `taskset`
    /// would; a replacement gets the same set. Default: the CPUs this
    /// process may use, with placement left to the kernel.
    ///
    /// For throughput-bound pools on a machine with few CPUs: a socket
    /// write wakes its reader as a "synchronous" wake-up, which the
    /// scheduler takes as a reason to run the reader on the writer's CPU, so
    /// the parent can end up sharing its CPU with a worker for the pool's
    /// whole life (about half of W1's throughput on 2 CPUs; see
    /// `BENCHMARKS.md`). Keeping the parent's thread on one CPU (with
    /// `sched_setaffinity`, for example through the `core_affinity` crate)
    /// and the workers on the others keeps them apart. Leave it unset when
    /// other programs share the machine's CPUs: a fixed placement cannot
    /// move away from their load.
    ///
    /// The pool refuses to start ([`StartError::Config`](crate::StartError::Config))
    /// when the set is empty, names a CPU past the kernel's limit
    /// (`CPU_SETSIZE`, 1024), or names none that is online; it acts on
    /// local processes, so a pool with a [`connector`](Self::connector)
    /// refuses it too. A set the kernel refuses otherwise (none of its
    /// CPUs in this process's cpuset, in a container say) fails each
    /// worker's start with [`StartError::Spawn`](crate::StartError::Spawn).
    pub fn worker_cpus(mut self, cpus: impl IntoIterator<Item = usize>) -> Self {
        self.worker_cpus = Some(cpus.into_iter().collect());
        self
    }
}
