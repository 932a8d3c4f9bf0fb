//! The broker's routing table: which shard (core) each machine lives on, its number
//! there, and the samples of the batch being routed, grouped per shard and machine.
//!
//! Kept apart from the actor so that the per-message work is plain data structure code:
//! one hash lookup by the machine id borrowed from the payload, and a push.

use crate::logic::{Sample, WrittenMinute};
use crate::messages::RouteSamples;
use crate::recent::SilentMachine;
use rustc_hash::{FxBuildHasher, FxHashMap};
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::Arc;

/// Where a machine's samples go.
#[derive(Debug, Clone, Copy)]
struct Route {
    shard: u32,
    /// The machine's number within its shard (the index of its aggregator there).
    index: u32,
    /// The batch that last gave this machine samples, and the position of its delivery in
    /// that batch's message to the shard: samples of one machine in one batch travel
    /// together without a per-batch map.
    batch: u64,
    slot: u32,
    /// When the machine's last batch was routed (µs since the epoch): for the machines
    /// silent the longest on the status page.
    last_seen: i64,
}

#[derive(Debug)]
pub(super) struct RoutingTable {
    by_machine: FxHashMap<Arc<str>, Route>,
    /// Machines per shard so far: the next machine's number there.
    machines_per_shard: Vec<u32>,
    /// The batch being routed, one message per shard.
    pending: Vec<RouteSamples>,
    batch: u64,
    /// When the batch being routed arrived (µs since the epoch).
    batch_at: i64,
}

impl RoutingTable {
    pub(super) fn new(shards: usize) -> Self {
        let shards = shards.max(1);
        RoutingTable {
            by_machine: FxHashMap::default(),
            machines_per_shard: vec![0; shards],
            pending: (0..shards).map(|_| RouteSamples::default()).collect(),
            batch: 0,
            batch_at: 0,
        }
    }

    /// Starts routing a batch that arrived at `at` (µs since the epoch).
    pub(super) fn start_batch(&mut self, at: i64) {
        self.batch_at = at;
    }

    /// Adds one accepted sample of `machine` to the batch being routed. A machine seen
    /// for the first time is assigned a shard (by hash, so it always lands on the same
    /// core) and announced to it in this batch.
    pub(super) fn add(&mut self, machine: &str, sample: Sample) {
        if !self.by_machine.contains_key(machine) {
            self.assign(machine);
        }
        let Some(route) = self.by_machine.get_mut(machine) else { return };
        let pending = &mut self.pending[route.shard as usize];
        if route.batch != self.batch {
            route.batch = self.batch;
            route.last_seen = self.batch_at;
            route.slot = pending.deliveries.len() as u32;
            pending.deliveries.push((route.index, Vec::new()));
        }
        pending.deliveries[route.slot as usize].1.push(sample);
    }

    /// Adds a minute `machine` wrote before this start (at start-up, before any sample).
    /// Rows of one machine in a row travel in one message.
    pub(super) fn add_written(&mut self, machine: &str, written: WrittenMinute) {
        if !self.by_machine.contains_key(machine) {
            self.assign(machine);
        }
        let Some(route) = self.by_machine.get_mut(machine) else { return };
        // Silent since its last written minute, as far as this run knows.
        route.last_seen = route.last_seen.max(written.minute.end().micros());
        let pending = &mut self.pending[route.shard as usize];
        match pending.written.last_mut() {
            Some((index, minutes)) if *index == route.index => minutes.push(written),
            _ => pending.written.push((route.index, vec![written])),
        }
    }

    fn assign(&mut self, machine: &str) {
        let machine: Arc<str> = machine.into();
        let shard = (FxBuildHasher.hash_one(&machine) % self.pending.len() as u64) as usize;
        let index = self.machines_per_shard[shard];
        self.machines_per_shard[shard] += 1;
        self.pending[shard].new_machines.push(machine.clone());
        // `batch` is set by `add` right after; u64::MAX never matches a real batch.
        self.by_machine
            .insert(machine, Route { shard: shard as u32, index, batch: u64::MAX, slot: 0, last_seen: 0 });
    }

    /// Ends the batch: the message for each shard that has something, with its shard.
    pub(super) fn take_batch(&mut self) -> Vec<(usize, RouteSamples)> {
        self.batch += 1;
        self.pending
            .iter_mut()
            .enumerate()
            .filter(|(_, pending)| {
                !pending.deliveries.is_empty()
                    || !pending.new_machines.is_empty()
                    || !pending.written.is_empty()
            })
            .map(|(shard, pending)| (shard, std::mem::take(pending)))
            .collect()
    }

    /// The `count` machines whose last message is the oldest, oldest first. One pass over
    /// every machine with a heap of `count`: a few milliseconds for 100,000 machines.
    pub(super) fn silent_longest(&self, count: usize) -> Vec<SilentMachine> {
        let mut heap: BinaryHeap<(i64, &Arc<str>)> = BinaryHeap::with_capacity(count + 1);
        for (machine, route) in &self.by_machine {
            heap.push((route.last_seen, machine));
            if heap.len() > count {
                heap.pop();
            }
        }
        heap.into_sorted_vec()
            .into_iter()
            .map(|(last_seen_micros, machine)| SilentMachine { machine: machine.clone(), last_seen_micros })
            .collect()
    }

    #[cfg(test)]
    fn machines(&self) -> usize {
        self.by_machine.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::{JournalMark, Timestamp};

    fn sample(micros: i64) -> Sample {
        Sample { ts: Timestamp::from_micros(micros), load_rate: 1.0, mileage: 1.0, mark: JournalMark::NONE }
    }

    #[test]
    fn groups_a_batch_per_shard_and_machine_and_numbers_machines_per_shard() {
        let mut table = RoutingTable::new(2);
        for (machine, ts) in [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)] {
            table.add(machine, sample(ts));
        }
        let first = table.take_batch();
        let announced: usize = first.iter().map(|(_, batch)| batch.new_machines.len()).sum();
        assert_eq!(announced, 3);
        let mut per_machine: Vec<(String, Vec<i64>)> = Vec::new();
        for (_, batch) in &first {
            assert_eq!(batch.new_machines.len(), batch.deliveries.len());
            for (index, samples) in &batch.deliveries {
                let machine = batch.new_machines[*index as usize].to_string();
                per_machine.push((machine, samples.iter().map(|s| s.ts.micros()).collect()));
            }
        }
        per_machine.sort();
        assert_eq!(
            per_machine,
            vec![("a".into(), vec![1, 3]), ("b".into(), vec![2, 5]), ("c".into(), vec![4])]
        );

        // The next batch announces nobody and keeps each machine's shard and number.
        table.add("c", sample(6));
        let second = table.take_batch();
        assert_eq!(second.len(), 1);
        let (shard, batch) = &second[0];
        assert!(batch.new_machines.is_empty());
        let (first_shard, first_batch) =
            first.iter().find(|(_, b)| b.new_machines.iter().any(|m| &**m == "c")).expect("c announced");
        assert_eq!(shard, first_shard);
        let c_index = first_batch.new_machines.iter().position(|m| &**m == "c").expect("c") as u32;
        assert_eq!(batch.deliveries, vec![(c_index, vec![sample(6)])]);
        assert!(table.take_batch().is_empty());
        assert_eq!(table.machines(), 3);
    }

    #[test]
    fn the_machines_silent_longest_come_oldest_first() {
        let mut table = RoutingTable::new(2);
        for (at, machine) in [(10, "a"), (20, "b"), (30, "c"), (40, "a")] {
            table.start_batch(at);
            table.add(machine, sample(at));
            table.take_batch();
        }
        let silent: Vec<(String, i64)> = table
            .silent_longest(2)
            .into_iter()
            .map(|s| (s.machine.to_string(), s.last_seen_micros))
            .collect();
        assert_eq!(silent, vec![("b".to_owned(), 20), ("c".to_owned(), 30)]);
    }
}
