//! The job store on a real database file: a job and its members round-trip, changes
//! replace members by their place, listing is newest first, a restart ends running jobs
//! (members taking their sessions' outcome where the session is stored), and purging
//! removes ended jobs only.

use super::*;
use crate::storage::{JobReason, JobRecord, JobState, JobStore, MemberRecord, MemberState};

fn job(id: &str, created: i64, counts: [u32; 6]) -> JobRecord {
    JobRecord {
        job_id: id.into(),
        spec: json!({"selector": {"platform": "linux"}, "request": "uptime"}),
        state: JobState::Running,
        reason: None,
        counts,
        created_at: t(created),
        finished_at: None,
    }
}

fn member(seq: u32, state: MemberState, session: Option<&str>) -> MemberRecord {
    MemberRecord {
        state,
        session_id: session.map(str::to_owned),
        ..MemberRecord::pending(seq, format!("d{seq}"))
    }
}

#[tokio::test]
async fn a_job_and_its_members_round_trip_and_changes_replace_members_by_place() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let members = (0..3)
        .map(|i| member(i, MemberState::Pending, None))
        .collect();
    store
        .create_job(job("j1", 1, [3, 0, 0, 0, 0, 0]), members)
        .await
        .unwrap();
    let mut done = member(1, MemberState::Completed, Some("s1"));
    done.exit_code = Some(0);
    done.output = Some("up 3 days".into());
    done.started_at = Some(t(5));
    done.finished_at = Some(t(9));
    let mut j = job("j1", 1, [2, 0, 1, 0, 0, 0]);
    j.state = JobState::Failed;
    j.reason = Some(JobReason::MaxFailures);
    j.finished_at = Some(t(10));
    store
        .update_job(j.clone(), vec![done.clone()])
        .await
        .unwrap();
    let (got, members) = store.get_job("j1").await.unwrap().unwrap();
    assert_eq!(got, j);
    assert_eq!(members.len(), 3);
    assert_eq!(members[1], done);
    assert_eq!(members[2], member(2, MemberState::Pending, None));
    assert!(store.get_job("nope").await.unwrap().is_none());

    store
        .create_job(job("j2", 2, [1, 0, 0, 0, 0, 0]), vec![])
        .await
        .unwrap();
    let listed: Vec<_> = store
        .list_jobs(10)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(listed, ["j2", "j1"]);
    assert_eq!(store.list_jobs(1).await.unwrap().len(), 1);

    // Purging removes ended jobs finished before the cutoff, never a running one.
    assert_eq!(store.purge_jobs(t(100)).await.unwrap(), 1);
    assert!(store.get_job("j1").await.unwrap().is_none());
    assert!(store.get_job("j2").await.unwrap().is_some());
}

#[tokio::test]
async fn a_restart_ends_running_jobs_and_members_take_their_stored_sessions_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let members = vec![
        member(0, MemberState::Completed, Some("s0")),
        // Its session ended, but the member's change was not written before the stop.
        member(1, MemberState::Running, Some("s1")),
        // Its session was live at the stop.
        member(2, MemberState::Running, Some("s2")),
        member(3, MemberState::Pending, None),
    ];
    store
        .create_job(job("j", 1, [1, 2, 1, 0, 0, 0]), members)
        .await
        .unwrap();
    let mut s1 = rec("s1", "t", SessionState::Completed, 2);
    s1.job_id = Some("j".into());
    put(&store, s1).await;
    put(&store, rec("s2", "t", SessionState::Running, 3)).await;
    drop(store);

    let store = SqliteStore::open(dir.path()).unwrap();
    store.mark_interrupted(t(50)).await.unwrap();
    assert_eq!(store.interrupt_jobs(t(50)).await.unwrap(), 1);
    let (j, m) = store.get_job("j").await.unwrap().unwrap();
    assert_eq!(
        (j.state, j.reason),
        (JobState::Failed, Some(JobReason::ServerRestarted))
    );
    assert_eq!(j.counts, [0, 0, 2, 1, 0, 1]);
    let states: Vec<_> = m.iter().map(|m| (m.state, m.reason)).collect();
    assert_eq!(
        states,
        [
            (MemberState::Completed, None),
            (MemberState::Completed, None),
            (MemberState::Failed, Some(JobReason::ServerRestarted)),
            (MemberState::Skipped, Some(JobReason::ServerRestarted)),
        ]
    );
    assert_eq!(store.interrupt_jobs(t(60)).await.unwrap(), 0, "once");
}
