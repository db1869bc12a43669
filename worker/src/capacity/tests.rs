//! Unit and property tests of the slot ledger.

use super::*;
use proptest::prelude::*;
use std::time::Duration;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn req(id: &str, uid: &str) -> SessionRequest {
    SessionRequest {
        session_id: id.to_owned(),
        uid: uid.to_owned(),
        token_key_id: None,
        config: Default::default(),
    }
}

#[test]
fn refuses_as_full_once_every_slot_is_held() {
    let mut ledger = Ledger::new(2);
    assert_eq!(ledger.reserve(req("ns/a", "1"), t(0)), Ok(Reserved::New));
    assert_eq!(ledger.reserve(req("ns/b", "2"), t(0)), Ok(Reserved::New));
    assert_eq!(
        ledger.reserve(req("ns/c", "3"), t(0)),
        Err(Refusal::Full { capacity: 2 })
    );
    assert_eq!(ledger.held(), 2);
}

#[test]
fn re_reserving_the_same_uid_takes_no_second_slot() {
    let mut ledger = Ledger::new(1);
    assert_eq!(ledger.reserve(req("ns/a", "1"), t(0)), Ok(Reserved::New));
    assert_eq!(
        ledger.reserve(req("ns/a", "1"), t(5)),
        Ok(Reserved::Existing)
    );
    assert_eq!(ledger.held(), 1);
    // The first reservation's time stands: a retry is not a new session.
    assert_eq!(ledger.sessions().next().map(|s| s.reserved_at), Some(t(0)));
}

#[test]
fn same_id_with_another_uid_conflicts() {
    let mut ledger = Ledger::new(3);
    ledger.reserve(req("ns/a", "old"), t(0)).ok();
    assert_eq!(
        ledger.reserve(req("ns/a", "new"), t(1)),
        Err(Refusal::Conflict {
            held_uid: "old".into()
        })
    );
    assert_eq!(
        ledger.release("ns/a", "new"),
        Released::UidMismatch {
            held_uid: "old".into()
        }
    );
    assert_eq!(ledger.held(), 1);
}

#[test]
fn release_is_idempotent() {
    let mut ledger = Ledger::new(1);
    ledger.reserve(req("ns/a", "1"), t(0)).ok();
    assert!(matches!(ledger.release("ns/a", "1"), Released::Freed(_)));
    assert_eq!(ledger.release("ns/a", "1"), Released::NotFound);
    assert_eq!(ledger.held(), 0);
}

#[test]
fn draining_refuses_new_sessions_but_accepts_retries_of_held_ones() {
    let mut ledger = Ledger::new(2);
    ledger.reserve(req("ns/a", "1"), t(0)).ok();
    ledger.drain(t(100));
    assert_eq!(
        ledger.reserve(req("ns/b", "2"), t(1)),
        Err(Refusal::Draining)
    );
    assert_eq!(
        ledger.reserve(req("ns/a", "1"), t(1)),
        Ok(Reserved::Existing)
    );
}

#[test]
fn drain_keeps_the_earliest_deadline() {
    let mut ledger = Ledger::new(1);
    assert_eq!(ledger.drain(t(50)), t(50));
    assert_eq!(ledger.drain(t(90)), t(50));
    assert_eq!(ledger.drain(t(20)), t(20));
}

#[test]
fn expire_ends_sessions_only_at_the_deadline() {
    let mut ledger = Ledger::new(2);
    ledger.reserve(req("ns/a", "1"), t(0)).ok();
    assert!(ledger.expire(t(1_000)).is_empty(), "not draining");
    ledger.drain(t(10));
    assert!(ledger.expire(t(9)).is_empty());
    assert_eq!(ledger.expire(t(10)).len(), 1);
    assert_eq!(ledger.held(), 0);
}

#[test]
fn connecting_moves_a_session_from_reserved_to_connected() {
    let mut ledger = Ledger::new(2);
    ledger.reserve(req("ns/a", "1"), t(0)).ok();
    ledger.reserve(req("ns/b", "2"), t(0)).ok();
    assert!(!ledger.mark_connected("ns/a", "other", t(1)));
    assert!(ledger.mark_connected("ns/a", "1", t(1)));
    assert_eq!((ledger.connected(), ledger.reserved_only()), (1, 1));
}

/// One call on the ledger, over a small id space so that collisions are common.
#[derive(Clone, Debug)]
enum Op {
    Reserve { id: u8, uid: u8 },
    Release { id: u8, uid: u8 },
    Connect { id: u8, uid: u8 },
    Drain { deadline: u64 },
    Expire { now: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..8u8, 0..2u8).prop_map(|(id, uid)| Op::Reserve { id, uid }),
        3 => (0..8u8, 0..2u8).prop_map(|(id, uid)| Op::Release { id, uid }),
        1 => (0..8u8, 0..2u8).prop_map(|(id, uid)| Op::Connect { id, uid }),
        1 => (0..100u64).prop_map(|deadline| Op::Drain { deadline }),
        1 => (0..100u64).prop_map(|now| Op::Expire { now }),
    ]
}

fn apply(ledger: &mut Ledger, op: &Op) -> Option<Result<Reserved, Refusal>> {
    match *op {
        Op::Reserve { id, uid } => {
            return Some(ledger.reserve(req(&format!("ns/{id}"), &uid.to_string()), t(0)));
        }
        Op::Release { id, uid } => {
            ledger.release(&format!("ns/{id}"), &uid.to_string());
        }
        Op::Connect { id, uid } => {
            ledger.mark_connected(&format!("ns/{id}"), &uid.to_string(), t(0));
        }
        Op::Drain { deadline } => {
            ledger.drain(t(deadline));
        }
        Op::Expire { now } => {
            ledger.expire(t(now));
        }
    }
    None
}

proptest! {
    #[test]
    fn held_slots_never_exceed_capacity(capacity in 0..5u32, ops in prop::collection::vec(op(), 0..64)) {
        let mut ledger = Ledger::new(capacity);
        for op in &ops {
            apply(&mut ledger, op);
            prop_assert!(ledger.held() <= capacity);
            prop_assert_eq!(ledger.connected() + ledger.reserved_only(), ledger.held());
        }
    }

    #[test]
    fn releasing_everything_returns_to_zero(capacity in 0..5u32, ops in prop::collection::vec(op(), 0..64)) {
        let mut ledger = Ledger::new(capacity);
        for op in &ops {
            apply(&mut ledger, op);
        }
        let held: Vec<(String, String)> = ledger
            .sessions()
            .map(|s| (s.request.session_id.clone(), s.request.uid.clone()))
            .collect();
        for (id, uid) in &held {
            prop_assert!(matches!(ledger.release(id, uid), Released::Freed(_)));
        }
        prop_assert_eq!(ledger.held(), 0);
    }

    #[test]
    fn draining_refuses_every_new_reservation(capacity in 0..5u32, ops in prop::collection::vec(op(), 0..64)) {
        let mut ledger = Ledger::new(capacity);
        for op in &ops {
            let was_draining = ledger.is_draining();
            let before = ledger.held();
            let outcome = apply(&mut ledger, op);
            if was_draining {
                prop_assert!(ledger.is_draining(), "draining cannot be undone");
                prop_assert!(ledger.held() <= before, "no slot is taken while draining");
                prop_assert!(!matches!(outcome, Some(Ok(Reserved::New))));
            }
        }
    }

    #[test]
    fn a_retried_reservation_never_takes_a_second_slot(capacity in 1..5u32, ops in prop::collection::vec(op(), 0..64), id in 0..8u8, uid in 0..2u8) {
        let mut ledger = Ledger::new(capacity);
        for op in &ops {
            apply(&mut ledger, op);
        }
        let first = ledger.reserve(req(&format!("ns/{id}"), &uid.to_string()), t(0));
        let held = ledger.held();
        let again = ledger.reserve(req(&format!("ns/{id}"), &uid.to_string()), t(1));
        prop_assert_eq!(ledger.held(), held);
        if first.is_ok() {
            prop_assert_eq!(again, Ok(Reserved::Existing));
        }
    }
}
