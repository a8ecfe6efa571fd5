//! A session's life, transition by transition, with no threads: the races of the real host
//! (cancel during a commit, a failed commit, a timer against an event, an event against the
//! session's end) played out in every order.

use super::*;
use crate::failure::FailureKind;
use crate::sandbox::{Effects as ActionEffects, Usage};
use crate::session::{Counters, Next, Wait};

const TENANT: &str = "acme";

fn session(status: Status) -> Session {
    Session {
        app: "v1".into(),
        status,
        state: Vec::new(),
        counters: Counters::default(),
        last_failure: None,
        finished_ms: None,
    }
}

fn ready(action: &str) -> Status {
    Status::Ready { action: action.into(), input: Vec::new() }
}

/// A new session, created and committed: its first action is queued.
fn started() -> Lifecycle {
    let mut life = Lifecycle::creating(SessionId(7), session(ready("start")));
    let effects = life.created(TENANT);
    assert!(effects.push);
    assert_eq!(life.phase(), Phase::Queued);
    life
}

/// Session `id` as a store gives it back, at `status`, with nothing in its inbox.
fn stored(id: u64, status: Status) -> StoredSession {
    let record = crate::store::SessionRecord {
        id: SessionId(id),
        tenant: TENANT.into(),
        app: "bot".into(),
        snapshot: session(status),
        fence: 0,
    };
    StoredSession { record, inbox: Vec::new(), unapplied: Vec::new() }
}

/// The outcome of an action that goes on with `next`, emitting `outputs`.
fn outcome(next: Next, outputs: &[&str]) -> ActionOutcome {
    let effects = ActionEffects {
        state: None,
        next,
        outputs: outputs.iter().map(|o| (*o).to_owned()).collect(),
        kv_writes: Default::default(),
    };
    ActionOutcome { result: Ok(effects), usage: Usage::default(), log: Vec::new() }
}

fn wait(timeout_ms: Option<u64>) -> Next {
    Next::Wait(Wait { action: "answer".into(), timeout_ms, on_timeout: timeout_ms.map(|_| "expired".into()) })
}

/// Runs the queued action to `result` and commits its checkpoint; the committed effects.
fn run(life: &mut Lifecycle, result: ActionOutcome) -> Effects {
    life.start_action(100).expect("an action is due");
    let effects = life.action_done(None, TENANT, Some(result), 1_000);
    let checkpoint = effects.checkpoint.expect("a checkpoint");
    life.committed(TENANT, checkpoint.outputs)
}

#[test]
fn an_action_is_committed_before_its_outputs_are_released_and_its_timer_armed() {
    let mut life = started();
    life.start_action(100).expect("due");
    let effects = life.action_done(None, TENANT, Some(outcome(wait(Some(500)), &["\"hi\""])), 1_000);
    assert_eq!(life.phase(), Phase::Committing);
    assert!(effects.publish.is_none() && effects.arm.is_none() && !effects.push, "nothing before the commit");
    assert_eq!(life.visible(), &ready("start"), "readers see the last committed status meanwhile");
    let checkpoint = effects.checkpoint.expect("checkpoint");
    let effects = life.committed(TENANT, checkpoint.outputs);
    assert_eq!(effects.arm, Some((1_500, 1)));
    let (first, outputs, status) = effects.publish.expect("published");
    assert_eq!((first, outputs), (0, vec!["\"hi\"".to_owned()]));
    assert!(matches!(status, Status::Waiting { .. }));
    assert_eq!(life.released(), 1);
}

#[test]
fn a_timer_that_lost_to_an_event_is_ignored() {
    let mut life = started();
    let armed = run(&mut life, outcome(wait(Some(500)), &[])).arm.expect("armed");
    assert!(life.accept_event(16, false).expect("accepted"), "it needs a pending-queue slot");
    let (answer, effects) = life.event_appended(Appended::New(1), b"1".to_vec(), None);
    assert_eq!(answer.expect("new"), Appended::New(1));
    assert!(effects.push, "the waiting session takes the event at once");
    assert!(!life.timer_fired(armed.1).push, "the stale timer does nothing");
    assert_eq!(life.phase(), Phase::Queued);
}

#[test]
fn an_event_that_lost_to_a_timer_waits_in_the_inbox() {
    let mut life = started();
    let armed = run(&mut life, outcome(wait(Some(500)), &[])).arm.expect("armed");
    assert!(life.timer_fired(armed.1).push);
    life.accept_event(16, false).expect("accepted while its timeout action is queued");
    let (_, effects) = life.event_appended(Appended::New(1), b"1".to_vec(), None);
    assert!(!effects.push, "it is busy: the event waits");
    // The timeout action waits again: the inbox's event is taken then.
    let effects = run(&mut life, outcome(wait(None), &[]));
    assert!(effects.push, "the next wait takes the event from the inbox");
}

#[test]
fn cancel_during_a_commit_ends_the_session_after_it() {
    let mut life = started();
    life.start_action(100).expect("due");
    let effects = life.action_done(None, TENANT, Some(outcome(wait(None), &["\"x\""])), 1_000);
    let checkpoint = effects.checkpoint.expect("checkpoint");
    assert!(life.cancel(TENANT).expect("cancel accepted").checkpoint.is_none(), "busy: later");
    assert!(life.cancel(TENANT).is_err(), "twice is refused");
    let effects = life.committed(TENANT, checkpoint.outputs);
    assert!(effects.publish.is_some(), "the committed outputs are still released");
    let cancel = effects.checkpoint.expect("the cancellation is a checkpoint of its own");
    assert_eq!(cancel.snapshot.status, Status::Cancelled);
    let effects = life.committed(TENANT, cancel.outputs);
    assert!(effects.finished.is_some());
    assert_eq!(life.phase(), Phase::Finished);
}

#[test]
fn cancel_of_an_idle_session_reports_its_inbox_as_not_applied() {
    let mut life = started();
    run(&mut life, outcome(Next::Goto("again".into()), &[]));
    // Busy (queued): an event goes to the inbox.
    life.accept_event(16, true).expect("accepted");
    life.event_appended(Appended::New(3), b"late".to_vec(), Some("k3".into())).0.expect("new");
    run(&mut life, outcome(Next::Wait(Wait { action: "w".into(), timeout_ms: None, on_timeout: None }), &[]));
    // The wait took the inbox's event; a second one comes, then a cancel before it is taken.
    life.start_action(100).expect("due");
    life.accept_event(16, false).expect("accepted");
    life.event_appended(Appended::New(4), b"never".to_vec(), Some("k4".into())).0.expect("new");
    let effects = life.action_done(None, TENANT, Some(outcome(Next::Done(serde_json::Value::Null), &[])), 1);
    let checkpoint = effects.checkpoint.expect("checkpoint");
    assert_eq!(life.unapplied(), [Unapplied { seq: 4, key: Some("k4".into()) }]);
    assert!(life.committed(TENANT, checkpoint.outputs).finished.is_some());
}

#[test]
fn an_event_racing_the_end_is_reported_back_never_dropped() {
    // Accepted while the last action runs; the action ends the session; then the append commits.
    let mut life = started();
    life.start_action(100).expect("due");
    life.accept_event(16, false).expect("still open: accepted");
    let effects = life.action_done(None, TENANT, Some(outcome(Next::Done(serde_json::Value::Null), &[])), 1);
    let checkpoint = effects.checkpoint.expect("checkpoint");
    let (answer, _) = life.event_appended(Appended::New(9), b"yes".to_vec(), Some("k".into()));
    assert!(matches!(answer, Err(Error::NotApplied { .. })), "{answer:?}");
    assert_eq!(life.unapplied(), [Unapplied { seq: 9, key: Some("k".into()) }]);
    assert!(life.committed(TENANT, checkpoint.outputs).finished.is_some());
    // After the end, an event is refused outright; a retry of a known key asks the store.
    assert!(matches!(life.accept_event(16, false), Err(Error::SessionState { .. })));
    assert!(!life.accept_event(16, true).expect("asks the store"));
}

#[test]
fn a_failed_commit_is_taken_back_and_only_given_up_tells_its_watchers() {
    let mut life = started();
    life.start_action(100).expect("due");
    let committed = life.visible().clone();
    let effects = life.action_done(None, TENANT, Some(outcome(wait(None), &["\"x\""])), 1);
    assert!(effects.checkpoint.is_some());
    let effects = life.commit_failed(&Error::ShuttingDown);
    assert!(effects.take_back.is_some_and(|why| why.contains("shutting down")), "taken back, saying why");
    assert!(effects.finished.is_none() && effects.publish.is_none(), "not ended, nothing released");
    assert_eq!(life.phase(), Phase::TakingBack);
    assert_eq!(life.visible(), &committed, "readers see the last committed status");
    assert!(matches!(life.accept_event(16, false), Err(Error::TakingBack { .. })), "try again in a moment");
    assert!(matches!(life.cancel(TENANT), Err(Error::TakingBack { .. })));

    // Its take-backs keep failing: it stops here, and its watchers hear the end.
    let effects = life.give_up("refused");
    assert!(effects.finished.is_some(), "counted as ended");
    let (_, outputs, status) = effects.publish.expect("its watchers hear the end");
    assert!(outputs.is_empty(), "nothing of the uncommitted action is released");
    assert!(matches!(status, Status::Failed { ref failure } if failure.kind == FailureKind::Trap));
    assert_eq!(life.phase(), Phase::Stopped);
    assert!(matches!(life.accept_event(16, false), Err(Error::SessionState { .. })));
}

#[test]
fn a_full_inbox_refuses_events() {
    let mut life = started();
    life.accept_event(2, false).expect("one");
    life.accept_event(2, false).expect("two");
    assert!(matches!(life.accept_event(2, false), Err(Error::QueueFull(QueueFull::Inbox(2)))));
    life.event_refused();
    life.accept_event(2, false).expect("room again");
}

#[test]
fn a_session_resumed_waiting_takes_its_inbox() {
    let stored = StoredSession {
        record: crate::store::SessionRecord {
            id: SessionId(3),
            tenant: TENANT.into(),
            app: "bot".into(),
            snapshot: session(Status::Waiting {
                wait: Wait { action: "answer".into(), timeout_ms: None, on_timeout: None },
                since_ms: 0,
            }),
            fence: 0,
        },
        inbox: vec![InboxEvent { seq: 5, event: b"hello".to_vec(), key: None }],
        unapplied: Vec::new(),
    };
    let (mut life, effects) = Lifecycle::resumed(stored, Inherited::default());
    assert!(effects.push);
    let due = life.start_action(100).expect("the event's action is due");
    assert_eq!((due.action.as_str(), due.input.as_slice()), ("answer", b"hello".as_slice()));
    let effects = life.action_done(None, TENANT, Some(outcome(Next::Done(serde_json::Value::Null), &[])), 1);
    assert_eq!(effects.checkpoint.expect("checkpoint").consumed, Some(5), "the checkpoint consumes the event");
}

#[test]
fn a_fenced_checkpoint_or_one_failing_too_often_in_a_row_gives_the_session_up() {
    let fail = |life: &mut Lifecycle, error: &Error| {
        life.start_action(100).expect("due");
        assert!(life.action_done(None, TENANT, Some(outcome(wait(None), &[])), 1).checkpoint.is_some());
        life.commit_failed(error)
    };
    // Another node holds its shard: it runs there, not taken back here.
    let mut fenced = started();
    let effects = fail(&mut fenced, &Error::Fenced { session: SessionId(7) });
    assert!(effects.take_back.is_none());
    let (_, _, status) = effects.publish.expect("its watchers hear it");
    let Status::Failed { failure } = status else { panic!("failed: {status:?}") };
    assert!(failure.message.contains("the host that holds its shard now runs it"), "{}", failure.message);
    assert_eq!(fenced.phase(), Phase::Stopped);

    // Failures in a row, each taken back (the life read back inherits the count)...
    let mut life = started();
    for _ in 0..TAKE_BACKS {
        assert!(fail(&mut life, &Error::ShuttingDown).take_back.is_some());
        let inherited = life.inherited();
        let stored = stored(7, ready("start"));
        let (resumed, effects) = Lifecycle::resumed(stored, inherited);
        assert!(effects.push, "it runs again");
        assert_eq!(resumed.wait_seq, inherited.wait_seq, "its waits numbered past the old life's");
        life = resumed;
    }
    // ...until one too many gives it up.
    assert!(fail(&mut life, &Error::ShuttingDown).take_back.is_none());
    assert_eq!(life.phase(), Phase::Stopped);

    // A commit between failures starts the count again.
    let mut life = started();
    assert!(fail(&mut life, &Error::ShuttingDown).take_back.is_some());
    life.take_backs = TAKE_BACKS;
    life.phase = Phase::Committing;
    life.committed(TENANT, Vec::new());
    assert_eq!(life.inherited().take_backs, 0);
}

#[test]
fn a_cancel_accepted_before_a_take_back_ends_the_session_read_back() {
    let stored = stored(3, ready("start"));
    let (life, effects) = Lifecycle::resumed(
        stored,
        Inherited { wait_seq: 4, cancel: true, take_backs: 1, taken_back: true, created: true },
    );
    assert!(!effects.push, "nothing more runs");
    let checkpoint = effects.checkpoint.expect("its cancellation is committed");
    assert_eq!(checkpoint.snapshot.status, Status::Cancelled);
    assert_eq!(life.phase(), Phase::Committing);
}

#[test]
fn an_event_landing_while_the_session_is_taken_back_is_left_to_the_life_read_back() {
    let mut life = started();
    life.start_action(100).expect("due");
    assert!(life.action_done(None, TENANT, Some(outcome(wait(None), &[])), 1).checkpoint.is_some());
    life.accept_event(16, false).expect("accepted while it commits");
    assert!(life.commit_failed(&Error::ShuttingDown).take_back.is_some());
    assert!(life.appending(), "not taken back before its append lands");
    let (answer, effects) = life.event_appended(Appended::New(1), b"x".to_vec(), None);
    assert!(matches!(answer, Ok(Appended::New(1))), "acknowledged: it is durable in the store's inbox");
    assert!(!effects.push && life.unapplied().is_empty(), "neither taken here nor reported");
    assert!(!life.appending());
}

#[test]
fn what_landed_unheard_is_counted_once_read_back() {
    // A creation of unknown outcome that landed, read back open: counted started, not finished.
    let mut creating = Lifecycle::creating(SessionId(7), session(ready("start")));
    assert!(creating.commit_failed(&Error::ShuttingDown).take_back.is_some());
    let (_, effects) = Lifecycle::resumed(stored(7, ready("start")), creating.inherited());
    assert_eq!(effects.landed_unheard, (true, false));

    // A final checkpoint that landed unheard, read back ended: counted finished, not started.
    let mut life = started();
    life.start_action(100).expect("due");
    let effects = life.action_done(None, TENANT, Some(outcome(Next::Done(serde_json::Value::Null), &[])), 1);
    assert!(effects.checkpoint.is_some() && effects.finished.is_none(), "not counted before it commits");
    assert!(life.commit_failed(&Error::ShuttingDown).take_back.is_some());
    let done = Status::Done { result: serde_json::Value::Null };
    let (_, effects) = Lifecycle::resumed(stored(7, done), life.inherited());
    assert_eq!(effects.landed_unheard, (false, true));
    assert!(effects.finished.is_none(), "its end counted once, as landed unheard");

    // A checkpoint read back open, and a session loaded at a start: nothing more to count.
    let mut life = started();
    life.start_action(100).expect("due");
    assert!(life.action_done(None, TENANT, Some(outcome(wait(None), &[])), 1).checkpoint.is_some());
    assert!(life.commit_failed(&Error::ShuttingDown).take_back.is_some());
    let (_, effects) = Lifecycle::resumed(stored(7, ready("start")), life.inherited());
    assert_eq!(effects.landed_unheard, (false, false));
    let (_, effects) = Lifecycle::resumed(stored(7, ready("start")), Inherited::default());
    assert_eq!(effects.landed_unheard, (false, false));
}

#[test]
fn an_event_taken_for_an_action_that_never_runs_is_reported_not_applied() {
    // Cancelled while the action that takes the event is queued: red-team helper 20 found the
    // event consumed (its inbox row deleted, its key answering `duplicate`) though never applied.
    let mut life = started();
    run(&mut life, outcome(wait(None), &[]));
    life.accept_event(16, true).expect("accepted");
    let (_, effects) = life.event_appended(Appended::New(1), b"pay".to_vec(), Some("order-43".into()));
    assert!(effects.push, "queued to take it");
    assert!(life.cancel(TENANT).expect("accepted").checkpoint.is_none(), "ends once its action is dispatched");
    assert!(life.start_action(100).is_none(), "nothing runs");
    let checkpoint = life.action_done(None, TENANT, None, 1).checkpoint.expect("its end is committed");
    assert_eq!(checkpoint.snapshot.status, Status::Cancelled);
    assert_eq!(checkpoint.consumed, None, "not consumed: the store reports its row not applied");
    assert_eq!(life.unapplied(), [Unapplied { seq: 1, key: Some("order-43".into()) }]);

    // Stopped by its loop guard before the action that takes the event: the same.
    let mut life = started();
    run(&mut life, outcome(wait(None), &[]));
    life.accept_event(16, false).expect("accepted");
    life.event_appended(Appended::New(2), b"x".to_vec(), None).0.expect("appended");
    assert!(life.start_action(1).is_none(), "its one action has run");
    let checkpoint = life.action_done(None, TENANT, None, 1).checkpoint.expect("its end is committed");
    assert!(matches!(checkpoint.snapshot.status, Status::Failed { .. }));
    assert_eq!(checkpoint.consumed, None);
    assert_eq!(life.unapplied(), [Unapplied { seq: 2, key: None }]);

    // An action that ran took its event, whatever became of the session after.
    let mut life = started();
    run(&mut life, outcome(wait(None), &[]));
    life.accept_event(16, false).expect("accepted");
    life.event_appended(Appended::New(3), b"y".to_vec(), None).0.expect("appended");
    life.start_action(100).expect("due");
    life.cancel(TENANT).expect("accepted while it runs");
    let done = life.action_done(None, TENANT, Some(outcome(wait(None), &[])), 1);
    assert_eq!(done.checkpoint.expect("checkpoint").consumed, Some(3));
    assert!(life.unapplied().is_empty());
}
