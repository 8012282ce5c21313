// Integration tests
pub mod it;
pub mod units;
