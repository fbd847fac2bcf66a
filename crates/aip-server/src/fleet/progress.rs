//! A live job's aggregate: its members, their counts by state, and which members changed
//! since the last write to the store.
//!
//! Invariant: `counts[s]` is the number of members in state `s`, kept by [`Progress::set`]
//! (the one place a member's state changes) in O(1); the changed members are a list,
//! each member in it at most once, so a flush writes only what changed.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::storage::{JobReason, JobRecord, JobState, MemberRecord, MemberState};

/// The members of a live job and how far it got.
pub(crate) struct Progress {
    pub(crate) job_id: String,
    pub(crate) spec: Value,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) state: JobState,
    pub(crate) reason: Option<JobReason>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) members: Vec<MemberRecord>,
    counts: [u32; 6],
    /// Members changed since the last [`Progress::take_changed`], each once.
    changed: Vec<u32>,
    is_changed: Vec<bool>,
    /// The job's own state changed since the last [`Progress::take_changed`].
    job_changed: bool,
}

impl Progress {
    /// A new job whose members are all pending.
    pub(crate) fn new(
        job_id: String,
        spec: Value,
        created_at: DateTime<Utc>,
        members: Vec<MemberRecord>,
    ) -> Self {
        let mut counts = [0u32; 6];
        for m in &members {
            counts[m.state.index()] += 1;
        }
        let n = members.len();
        Self {
            job_id,
            spec,
            created_at,
            state: JobState::Running,
            reason: None,
            finished_at: None,
            members,
            counts,
            changed: Vec::new(),
            is_changed: vec![false; n],
            job_changed: false,
        }
    }

    /// Members by state, in [`MemberState::ALL`] order.
    #[cfg(test)]
    pub(crate) fn counts(&self) -> [u32; 6] {
        self.counts
    }

    /// How many members are in `state`.
    pub(crate) fn count(&self, state: MemberState) -> u32 {
        self.counts[state.index()]
    }

    /// Members that failed or were cancelled.
    pub(crate) fn failures(&self) -> u32 {
        self.count(MemberState::Failed) + self.count(MemberState::Cancelled)
    }

    /// Changes member `seq` with `f`, keeping the counts and the changed list.
    pub(crate) fn set(&mut self, seq: u32, f: impl FnOnce(&mut MemberRecord)) {
        let i = seq as usize;
        let Some(m) = self.members.get_mut(i) else {
            return;
        };
        let before = m.state;
        f(m);
        let after = m.state;
        if before != after {
            self.counts[before.index()] -= 1;
            self.counts[after.index()] += 1;
        }
        if !self.is_changed[i] {
            self.is_changed[i] = true;
            self.changed.push(seq);
        }
    }

    /// The job as stored now.
    pub(crate) fn record(&self) -> JobRecord {
        JobRecord {
            job_id: self.job_id.clone(),
            spec: self.spec.clone(),
            state: self.state,
            reason: self.reason,
            counts: self.counts,
            created_at: self.created_at,
            finished_at: self.finished_at,
        }
    }

    /// The job and the members changed since the last call (then forgotten).
    pub(crate) fn take_changed(&mut self) -> Option<(JobRecord, Vec<MemberRecord>)> {
        if self.changed.is_empty() && !self.job_changed {
            return None;
        }
        self.job_changed = false;
        let changed = std::mem::take(&mut self.changed);
        let members = changed
            .iter()
            .filter_map(|&seq| {
                self.is_changed[seq as usize] = false;
                self.members.get(seq as usize).cloned()
            })
            .collect();
        Some((self.record(), members))
    }

    /// Ends the job: its state, reason and end time are written by the next flush.
    pub(crate) fn end(&mut self, state: JobState, reason: Option<JobReason>) {
        self.state = state;
        self.reason = reason;
        self.finished_at = Some(Utc::now());
        self.job_changed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(seq: u32) -> MemberRecord {
        MemberRecord::pending(seq, format!("d{seq}"))
    }

    #[test]
    fn a_waiting_member_costs_one_small_row() {
        // Paid per device of a job while it waits: no task, no channel, no timer.
        let size = std::mem::size_of::<MemberRecord>();
        assert!(size <= 128, "MemberRecord is {size} bytes");
    }

    #[test]
    fn counts_follow_every_state_change_and_changed_members_are_listed_once() {
        let mut p = Progress::new(
            "j".into(),
            Value::Null,
            Utc::now(),
            (0..4).map(member).collect(),
        );
        assert_eq!(p.counts(), [4, 0, 0, 0, 0, 0]);
        p.set(1, |m| m.state = MemberState::Running);
        p.set(1, |m| m.state = MemberState::Failed);
        p.set(2, |m| m.state = MemberState::Skipped);
        assert_eq!(p.counts(), [2, 0, 0, 1, 0, 1]);
        assert_eq!(p.failures(), 1);
        let (job, changed) = p.take_changed().expect("changes");
        assert_eq!(job.counts, p.counts());
        assert_eq!(changed.iter().map(|m| m.seq).collect::<Vec<_>>(), [1, 2]);
        assert!(p.take_changed().is_none());
        p.set(9, |m| m.state = MemberState::Running);
        assert!(p.take_changed().is_none(), "no such member");
    }
}
