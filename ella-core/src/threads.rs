//! The CPU threads ella computes on.
//!
//! The CPU backends (Burn's flex and ndarray, and ella's own kernels) parallelise through
//! rayon: by default on rayon's global pool, one thread per core. A host that needs cores
//! for itself (a game's render and simulation threads) gives a pipeline a pool of its own
//! size: the pipeline's work then runs on that pool's threads, and the calling thread waits.
//! Host callbacks (progress, tensors) still run on the calling thread.

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::limits;

/// The stack of each thread ella starts: model loads and forward passes recurse through
/// every block, deeper than the usual 2–8 MiB in unoptimised builds. Only touched pages
/// are committed.
pub const STACK_BYTES: usize = 64 << 20;

/// Where ella's CPU work runs: on every core, or on a pool of a chosen size.
#[derive(Clone, Default)]
pub struct Threads {
    /// `None`: rayon's global pool (all cores).
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl Threads {
    /// Every core (rayon's global pool, shared with anything else in the process using it).
    pub fn all_cores() -> Self {
        Self::default()
    }

    /// A pool of `count` threads of its own. `count` 0 is an error (use [`Threads::all_cores`]).
    pub fn new(count: usize) -> Result<Self> {
        if count == 0 || count > limits::MAX_THREADS {
            return Err(Error::InvalidInput(format!(
                "{count} CPU threads: give 1 to {} (or all cores)",
                limits::MAX_THREADS
            )));
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(count)
            .thread_name(|i| format!("ella-cpu-{i}"))
            .stack_size(STACK_BYTES)
            .build()
            .map_err(|e| Error::InvalidInput(format!("cannot start {count} CPU threads: {e}")))?;
        Ok(Self {
            pool: Some(Arc::new(pool)),
        })
    }

    /// How many threads the work runs on.
    pub fn count(&self) -> usize {
        match &self.pool {
            Some(pool) => pool.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// Runs `work` on these threads (on the calling thread when they are all cores).
    pub fn install<R: Send>(&self, work: impl FnOnce() -> R + Send) -> R {
        match &self.pool {
            Some(pool) => pool.install(work),
            None => work(),
        }
    }
}

impl fmt::Debug for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pool {
            Some(_) => write!(f, "Threads({})", self.count()),
            None => write!(f, "Threads(all cores)"),
        }
    }
}
