pub mod cube;
pub mod plane;
pub mod reduce_dim;
pub mod shared_sum;
pub mod unit;

mod base;
mod blueprint;

pub use base::*;
pub use blueprint::*;
