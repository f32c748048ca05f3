//! Helpers shared by the benches (each includes this file by `#[path]`, as
//! they include tests/support). A directory, not `benches/common.rs`, so
//! that cargo does not take it for a bench of its own.
#![allow(dead_code)]

/// The number in environment variable `name`, or `default` when it is unset;
/// panics naming the variable when it is not a number.
pub fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}
