//! Stopping long work early: a host's cancel flag, checked between the blocks of the long
//! model calls (T5 layers, U-Net and ControlNet blocks, VAE levels and tiles), so that a
//! cancellation takes effect within one block rather than at the end of a step or decode.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// A flag another thread may set to stop the call it is passed to, or none.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cancel<'a>(Option<&'a AtomicBool>);

impl<'a> Cancel<'a> {
    /// A call that runs to its end.
    pub const NEVER: Cancel<'static> = Cancel(None);

    /// Stops the call once `flag` is set.
    pub fn new(flag: &'a AtomicBool) -> Self {
        Self(Some(flag))
    }

    /// [`Cancel::new`] when there is a flag, else [`Cancel::NEVER`].
    pub fn from_flag(flag: Option<&'a AtomicBool>) -> Self {
        Self(flag)
    }

    /// `Err(Error::Cancelled)` once the flag is set.
    pub fn check(self) -> Result<()> {
        match self.0.is_some_and(|flag| flag.load(Ordering::Relaxed)) {
            true => Err(Error::Cancelled),
            false => Ok(()),
        }
    }
}
