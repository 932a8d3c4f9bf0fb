//! The process's allocator: mimalloc, told to give freed memory back to the OS at once.
//!
//! Why mimalloc: the data path allocates a payload, a topic and a few small vectors per
//! message across threads, which glibc's malloc served with a quarter of the pipeline's
//! CPU time (docs/benchmarks.md).
//!
//! Why at once: mimalloc (v3) keeps memory freed by a thread for a second before
//! returning it, and a thread that goes quiet keeps it until it allocates again. The
//! service frees in waves (every machine's minute closes at once, the writer's buffer
//! empties), so the resident memory stood 20 to 40 MB above what was in use at 100,000
//! machines: 2.14 to 2.38 KiB a machine at the peak of a drain, against issue 12's bound
//! of 2 KiB; 1.79 to 1.94 KiB returned at once, for about 9 % more CPU a message in that
//! drain (none measurable in one from 10,000 machines; docs/benchmarks.md, session 14).

use libmimalloc_sys::{mi_option_set, mi_option_t};
use std::ffi::c_long;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay`: how long (ms) freed memory is kept before it is returned.
/// libmimalloc-sys does not name it; its neighbours there are `mi_option_eager_commit_delay`
/// (14) and `mi_option_use_numa_nodes` (16). A test checks its default.
const PURGE_DELAY: mi_option_t = 15;

/// Freed memory goes back to the OS at once. Call first in `main`, before any thread
/// starts. An environment variable `MIMALLOC_PURGE_DELAY` still wins: an operator who
/// would rather drain a large fleet's backlog faster than hold 2 KiB a machine.
pub(crate) fn return_freed_memory_at_once() {
    if let Some(delay) = purge_delay(std::env::var_os(PURGE_DELAY_VARIABLE).as_deref()) {
        set_option(PURGE_DELAY, delay);
    }
}

/// mimalloc reads it at start-up itself.
const PURGE_DELAY_VARIABLE: &str = "MIMALLOC_PURGE_DELAY";

/// The purge delay to set, given the environment's: none when the operator set one.
fn purge_delay(from_environment: Option<&std::ffi::OsStr>) -> Option<c_long> {
    from_environment.is_none().then_some(0)
}

#[allow(unsafe_code)]
fn set_option(option: mi_option_t, value: c_long) {
    // SAFETY: `mi_option_set` stores `value` in mimalloc's table of options, which is
    // only read later; it is not thread safe, and it runs before any thread is started
    // (`main`'s first call) or, in tests, where no other test touches options.
    unsafe { mi_option_set(option, value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    fn option(option: mi_option_t) -> c_long {
        // SAFETY: reads the table `set_option` writes; see there.
        unsafe { libmimalloc_sys::mi_option_get(option) }
    }

    #[test]
    fn an_operators_purge_delay_is_left_alone() {
        assert_eq!(purge_delay(None), Some(0));
        assert_eq!(purge_delay(Some(std::ffi::OsStr::new("1000"))), None);
    }

    #[test]
    fn the_purge_delay_is_mimallocs_and_set_to_zero() {
        // mimalloc v3's default for purge_delay (1000 ms): the option number is right.
        let expected = std::env::var(PURGE_DELAY_VARIABLE).ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
        assert_eq!(option(PURGE_DELAY), expected, "option {PURGE_DELAY} is not mimalloc's purge delay");
        set_option(PURGE_DELAY, 0);
        assert_eq!(option(PURGE_DELAY), 0);
    }
}
