//! Where the service's threads run (`service.thread_placement`): the MQTT intake on a
//! CPU of its own, every other thread on the rest.
//!
//! paho's receive thread reads each message, acknowledges it and appends it to the
//! journal: a backlog drains through it one message at a time. Left to the scheduler,
//! the actor threads (the broker it wakes, the shards the broker wakes) were placed on
//! its CPU and took it away from it, while the other CPU idled: with the split, the
//! million-message drain ran about 1.2 times as fast on a 2-CPU machine, where pinning
//! the paho floor alone changed nothing (docs/benchmarks.md, session 18).
//!
//! How it is applied: the thread that starts the service takes the actors' CPUs before
//! any other thread exists, so every thread it starts inherits them; the MQTT
//! connection thread takes the intake's CPU before it connects, so paho's threads, which
//! the first connect starts (they live until the client is destroyed, across reconnects;
//! paho would start them again only from a connect, on that thread), inherit that one.

use fleetagg_config::ThreadPlacement;
use rustix::thread::{sched_getaffinity, sched_setaffinity, CpuSet};

/// The CPUs of a split: the intake's and the actors'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The MQTT client's threads (receive, send) and the connection thread.
    pub intake: Vec<usize>,
    /// Everything else: the broker, the shards, the writer, the monitor, tokio's pools.
    pub actors: Vec<usize>,
}

impl Split {
    /// The split for a process allowed on `allowed` CPUs, of which it may keep `usable`
    /// busy (fewer under a CPU quota), under `placement`; `None` when the operating system
    /// places the threads: `os`, a single CPU, or a quota below the CPUs allowed (a
    /// container sharing a host's CPUs: a CPU of its own would be a CPU other containers
    /// also use, and every instance would pick the same one).
    ///
    /// The intake takes the highest-numbered CPU: the first ones tend to carry more of
    /// the machine's own work (interrupts, housekeeping).
    pub fn plan(placement: ThreadPlacement, allowed: &[usize], usable: usize) -> Option<Split> {
        if placement == ThreadPlacement::Os || allowed.len() < 2 || usable < allowed.len() {
            return None;
        }
        let mut actors = allowed.to_vec();
        actors.sort_unstable();
        actors.dedup();
        let intake = actors.pop()?;
        (!actors.is_empty()).then(|| Split { intake: vec![intake], actors })
    }

    /// The split for this process under `placement`, from the CPUs the calling thread may
    /// use; `None` (the operating system places the threads) when they cannot be read.
    pub fn for_this_process(placement: ThreadPlacement) -> Option<Split> {
        if placement == ThreadPlacement::Os {
            return None;
        }
        match sched_getaffinity(None) {
            Ok(set) => {
                let allowed = cpus_of(&set);
                // std's count: the CPUs allowed, or fewer under a cgroup CPU quota.
                let usable = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
                let split = Split::plan(placement, &allowed, usable);
                if split.is_none() && usable < allowed.len() {
                    tracing::info!(
                        usable,
                        allowed = allowed.len(),
                        "a CPU quota below the CPUs allowed: threads placed by the OS"
                    );
                }
                split
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the CPUs this process may use; threads placed by the OS");
                None
            }
        }
    }

    /// Moves the calling thread, and every thread it starts from now on, to the actors'
    /// CPUs. False (logged) if the operating system refused.
    pub fn pin_actors_here(&self) -> bool {
        pin_calling_thread(&self.actors, "actors")
    }

    /// Moves the calling thread, and every thread it starts from now on, to the intake's
    /// CPU. False (logged) if the operating system refused.
    pub fn pin_intake_here(&self) -> bool {
        pin_calling_thread(&self.intake, "MQTT intake")
    }
}

fn cpus_of(set: &CpuSet) -> Vec<usize> {
    (0..CpuSet::MAX_CPU).filter(|&cpu| set.is_set(cpu)).collect()
}

fn pin_calling_thread(cpus: &[usize], what: &str) -> bool {
    let mut set = CpuSet::new();
    for &cpu in cpus.iter().filter(|&&cpu| cpu < CpuSet::MAX_CPU) {
        set.set(cpu);
    }
    match sched_setaffinity(None, &set) {
        Ok(()) => true,
        Err(err) => {
            // Not fatal: the service works unpinned, as with `thread_placement = "os"`.
            tracing::warn!(error = %err, threads = what, cpus = ?cpus, "cannot pin threads to their CPUs; the OS places them");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs the calling thread may use now, in ascending order.
    fn allowed_cpus() -> std::io::Result<Vec<usize>> {
        Ok(cpus_of(&sched_getaffinity(None)?))
    }

    #[test]
    fn the_intake_takes_the_highest_cpu_and_the_actors_the_rest() {
        let split = Split::plan(ThreadPlacement::Split, &[0, 1], 2);
        assert_eq!(split, Some(Split { intake: vec![1], actors: vec![0] }));
        let split = Split::plan(ThreadPlacement::Split, &[0, 1, 2, 3, 4, 5, 6, 7], 8);
        assert_eq!(split, Some(Split { intake: vec![7], actors: vec![0, 1, 2, 3, 4, 5, 6] }));
        // A cpuset or taskset that left scattered CPUs, given in any order.
        let split = Split::plan(ThreadPlacement::Split, &[5, 2, 9], 3);
        assert_eq!(split, Some(Split { intake: vec![9], actors: vec![2, 5] }));
    }

    #[test]
    fn one_cpu_a_cpu_quota_or_os_placement_splits_nothing() {
        assert_eq!(Split::plan(ThreadPlacement::Split, &[3], 1), None);
        assert_eq!(Split::plan(ThreadPlacement::Split, &[], 1), None);
        assert_eq!(Split::plan(ThreadPlacement::Split, &[3, 3], 2), None, "one CPU named twice is one CPU");
        assert_eq!(Split::plan(ThreadPlacement::Os, &[0, 1, 2, 3], 4), None);
        // A container limited to 2 CPUs' worth of time on a 64-CPU host.
        let host: Vec<usize> = (0..64).collect();
        assert_eq!(Split::plan(ThreadPlacement::Split, &host, 2), None);
    }

    #[test]
    fn a_cpu_the_process_may_not_use_is_refused_and_the_thread_keeps_its_cpus() {
        std::thread::spawn(|| {
            let before = allowed_cpus().expect("cpus");
            // The last CPU a set can name: no machine of this project has it.
            let missing = CpuSet::MAX_CPU - 1;
            let split = Split { intake: vec![missing], actors: vec![missing] };
            assert!(!split.pin_intake_here(), "refused, not fatal");
            assert!(!split.pin_actors_here());
            assert_eq!(allowed_cpus().expect("cpus"), before);
            // Beyond what a set can name at all: nothing to set, refused the same way.
            let beyond = Split { intake: vec![CpuSet::MAX_CPU + 1], actors: vec![] };
            assert!(!beyond.pin_intake_here());
            assert_eq!(allowed_cpus().expect("cpus"), before);
        })
        .join()
        .expect("the pinning thread");
    }

    #[test]
    fn a_thread_pinned_to_the_intake_leaves_the_actors_cpus_alone() {
        // On a thread of its own: affinity is per thread and inherited by what it starts.
        let allowed = allowed_cpus().expect("the test's own CPUs");
        std::thread::spawn(move || {
            let Some(split) = Split::plan(ThreadPlacement::Split, &allowed, allowed.len()) else {
                // A one-CPU machine: nothing to split, and the thread keeps its CPUs.
                assert_eq!(allowed.len(), 1);
                return;
            };
            assert!(split.pin_actors_here());
            assert_eq!(allowed_cpus().expect("cpus"), split.actors);
            let child = std::thread::spawn(allowed_cpus).join().expect("child").expect("cpus");
            assert_eq!(child, split.actors, "a thread started now inherits the actors' CPUs");
            assert!(split.pin_intake_here(), "a thread may move back within the process's CPUs");
            assert_eq!(allowed_cpus().expect("cpus"), split.intake);
        })
        .join()
        .expect("the pinning thread");
    }
}
