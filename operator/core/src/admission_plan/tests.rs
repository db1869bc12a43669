use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::*;

/// A round without rate limits.
fn plan(
    ledger: &Ledger,
    pending: &[PendingSession],
    backends: &HashMap<BackendKey, BackendView>,
    providers: &HashMap<String, u32>,
) -> Plan {
    let caps = Caps {
        providers: providers.clone(),
        ..Caps::default()
    };
    super::plan(ledger, pending, backends, &caps, &RateLimits::default(), 0)
}

fn backend_key(name: &str) -> BackendKey {
    BackendKey {
        namespace: "ns".into(),
        name: name.into(),
    }
}

fn session(n: usize) -> SessionKey {
    SessionKey {
        namespace: "ns".into(),
        name: format!("s{n}"),
        uid: format!("uid-{n}"),
    }
}

fn worker(name: &str, capacity: u32) -> WorkerView {
    WorkerView {
        name: name.into(),
        ready: true,
        draining: false,
        capacity,
        held: 0,
    }
}

fn one_backend(max_sessions: u32, workers: Vec<WorkerView>) -> HashMap<BackendKey, BackendView> {
    HashMap::from([(
        backend_key("b"),
        BackendView {
            provider: "p".into(),
            accepted: true,
            max_sessions,
            placement: Placement::Packed,
            workers,
        },
    )])
}

fn pending(n: usize) -> Vec<PendingSession> {
    (0..n)
        .map(|i| PendingSession {
            key: session(i),
            backend: backend_key("b"),
            created: i as i64,
            misfit: None,
        })
        .collect()
}

#[test]
fn backend_cap_admits_the_oldest_and_queues_the_rest_in_order() {
    let backends = one_backend(2, vec![worker("w1", 10)]);
    let plan = plan(&Ledger::new(), &pending(4), &backends, &HashMap::new());
    let admitted: Vec<_> = plan.admit.iter().map(|(k, _)| k.name.clone()).collect();
    assert_eq!(admitted, ["s0", "s1"]);
    assert_eq!(
        plan.waiting
            .iter()
            .map(|w| (w.key.name.as_str(), w.blocked, w.queue_position))
            .collect::<Vec<_>>(),
        [
            ("s2", Blocked::BackendLimit, Some(1)),
            ("s3", Blocked::BackendLimit, Some(2))
        ]
    );
}

#[test]
fn a_session_whose_audio_does_not_fit_waits_outside_the_queue_and_takes_no_slot() {
    let backends = one_backend(0, vec![worker("w1", 1)]);
    let mut sessions = pending(3);
    sessions[0].misfit = Some(Misfit::AudioFormat(
        "spec.audio.channels: 2 channels are not served".into(),
    ));
    let plan = plan(&Ledger::new(), &sessions, &backends, &HashMap::new());
    let admitted: Vec<_> = plan.admit.iter().map(|(k, _)| k.name.clone()).collect();
    assert_eq!(
        admitted,
        ["s1"],
        "the misfit ahead of s1 does not take the only slot"
    );
    let waiting: Vec<_> = plan
        .waiting
        .iter()
        .map(|w| {
            (
                w.key.name.as_str(),
                w.blocked,
                w.queue_position,
                w.detail.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        waiting,
        [
            (
                "s0",
                Blocked::AudioFormatNotSupported,
                None,
                Some("spec.audio.channels: 2 channels are not served")
            ),
            ("s2", Blocked::NoWorkerCapacity, Some(1), None),
        ]
    );
    assert_eq!(
        Blocked::AudioFormatNotSupported.reason(),
        "AudioFormatNotSupported"
    );
}

#[test]
fn a_multi_user_session_without_the_capability_waits_outside_the_queue_and_takes_no_slot() {
    let backends = one_backend(0, vec![worker("w1", 10)]);
    let mut sessions = pending(4);
    let why = "spec.participants lists 2 participants beside spec.user, but ...";
    sessions[0].misfit = Some(Misfit::MultiUser(why.into()));
    let plan = plan(
        &Ledger::new(),
        &sessions,
        &backends,
        &HashMap::from([("p".to_string(), 2)]),
    );
    let admitted: Vec<_> = plan.admit.iter().map(|(k, _)| k.name.clone()).collect();
    assert_eq!(
        admitted,
        ["s1", "s2"],
        "the refused session takes none of the provider's two slots"
    );
    let waiting: Vec<_> = plan
        .waiting
        .iter()
        .map(|w| {
            (
                w.key.name.as_str(),
                w.blocked,
                w.queue_position,
                w.detail.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        waiting,
        [
            ("s0", Blocked::MultiUserNotSupported, None, Some(why)),
            ("s3", Blocked::ProviderLimit, Some(1), None),
        ]
    );
    assert_eq!(
        Blocked::MultiUserNotSupported.reason(),
        "MultiUserNotSupported"
    );
}

#[test]
fn a_misfit_waits_behind_a_missing_or_unaccepted_backend_first() {
    let mut sessions = pending(1);
    sessions[0].misfit = Some(Misfit::MultiUser("no multiUserSupport".into()));
    let mut backends = one_backend(0, vec![worker("w1", 1)]);
    backends.get_mut(&backend_key("b")).unwrap().accepted = false;
    let round = plan(&Ledger::new(), &sessions, &backends, &HashMap::new());
    assert_eq!(
        (round.waiting[0].blocked, round.waiting[0].queue_position),
        (Blocked::BackendNotAccepted, Some(1))
    );
    assert_eq!(round.waiting[0].detail, None);
}

#[test]
fn the_reasons_of_misfits_are_known_as_such() {
    assert!(Misfit::is_reason("AudioFormatNotSupported"));
    assert!(Misfit::is_reason("MultiUserNotSupported"));
    for (misfit, reason) in [
        (Misfit::Transport("t".into()), "TransportNotSupported"),
        (Misfit::UserIdReserved("u".into()), "UserIDReserved"),
        (Misfit::RoomNameTooLong("r".into()), "RoomNameTooLong"),
        (Misfit::RoomInUse("r".into()), "RoomInUse"),
    ] {
        assert_eq!(misfit.blocked().reason(), reason);
        assert!(Misfit::is_reason(reason) && misfit.blocked().is_misfit());
    }
    assert!(!Misfit::is_reason("BackendLimit"));
    assert!(!Misfit::is_reason("WorkerLost"));
}

#[test]
fn provider_cap_holds_across_backends() {
    let mut backends = one_backend(0, vec![worker("w1", 10)]);
    backends.insert(
        backend_key("c"),
        BackendView {
            provider: "p".into(),
            accepted: true,
            max_sessions: 0,
            placement: Placement::Packed,
            workers: vec![worker("w2", 10)],
        },
    );
    let mut sessions = pending(2);
    sessions.push(PendingSession {
        key: session(9),
        backend: backend_key("c"),
        created: 9,
        misfit: None,
    });
    let plan = plan(
        &Ledger::new(),
        &sessions,
        &backends,
        &HashMap::from([("p".to_string(), 2)]),
    );
    assert_eq!(plan.admit.len(), 2);
    assert_eq!(plan.waiting[0].blocked, Blocked::ProviderLimit);
}

#[test]
fn full_workers_and_missing_workers_say_so() {
    let plan1 = plan(
        &Ledger::new(),
        &pending(3),
        &one_backend(0, vec![worker("w1", 2)]),
        &HashMap::new(),
    );
    assert_eq!(plan1.waiting[0].blocked, Blocked::NoWorkerCapacity);
    let plan2 = plan(
        &Ledger::new(),
        &pending(1),
        &one_backend(0, vec![]),
        &HashMap::new(),
    );
    assert_eq!(plan2.waiting[0].blocked, Blocked::BackendNotReady);
    let plan3 = plan(
        &Ledger::new(),
        &pending(1),
        &HashMap::new(),
        &HashMap::new(),
    );
    assert_eq!(plan3.waiting[0].blocked, Blocked::BackendNotFound);
}

#[test]
fn a_session_already_holding_a_slot_is_not_admitted_twice() {
    let mut ledger = Ledger::new();
    ledger.hold(
        session(0),
        Slot {
            provider: "p".into(),
            backend: backend_key("b"),
            worker: "w1".into(),
        },
    );
    let plan = plan(
        &ledger,
        &pending(1),
        &one_backend(0, vec![worker("w1", 1)]),
        &HashMap::new(),
    );
    assert!(plan.admit.is_empty() && plan.waiting.is_empty());
}

/// One step of a random history.
#[derive(Clone, Debug)]
enum Op {
    /// A user creates a session on backend `b % 3`.
    Create(usize),
    /// A user deletes the `i`-th live session.
    Delete(usize),
    /// Worker `w` of backend `b` dies (replaced by a fresh one).
    LoseWorker(usize, usize),
    /// The operator crashes and rebuilds its ledger from the API state.
    Restart,
    /// An admission round runs.
    Admit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize).prop_map(Op::Create),
        2 => any::<usize>().prop_map(Op::Delete),
        1 => (0..3usize, 0..3usize).prop_map(|(b, w)| Op::LoseWorker(b, w)),
        1 => Just(Op::Restart),
        4 => Just(Op::Admit),
    ]
}

/// The API state the ledger is rebuilt from: each live session and the slot its status names.
struct World {
    backends: HashMap<BackendKey, BackendView>,
    provider_caps: HashMap<String, u32>,
    sessions: BTreeMap<SessionKey, (BackendKey, i64, Option<Slot>)>,
    ledger: Ledger,
    next: usize,
}

impl World {
    fn check_caps(&self) -> Result<(), TestCaseError> {
        for (provider, cap) in &self.provider_caps {
            if *cap > 0 {
                prop_assert!(
                    self.ledger.provider_count(provider) <= *cap,
                    "provider {provider} over its cap"
                );
            }
        }
        for (key, b) in &self.backends {
            if b.max_sessions > 0 {
                prop_assert!(
                    self.ledger.backend_count(key) <= b.max_sessions,
                    "backend {key:?} over its cap"
                );
            }
            for w in &b.workers {
                prop_assert!(
                    self.ledger.worker_count(key, &w.name) <= w.capacity,
                    "worker {} over capacity",
                    w.name
                );
            }
        }
        // The ledger is exactly the API state: nothing leaked, nothing missing.
        let in_api = self
            .sessions
            .values()
            .filter(|(_, _, slot)| slot.is_some())
            .count();
        prop_assert_eq!(self.ledger.len(), in_api);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// For any history of creates, deletes, worker losses, operator restarts and admission
    /// rounds, no cap is ever exceeded, the ledger never leaks a slot, and each backend's
    /// queue is first come, first served.
    #[test]
    fn caps_hold_and_no_slot_leaks(
        provider_caps in proptest::collection::vec(0u32..6, 2),
        backend_caps in proptest::collection::vec(0u32..6, 3),
        worker_caps in proptest::collection::vec(proptest::collection::vec(1u32..4, 0..3), 3),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut backends = HashMap::new();
        for b in 0..3 {
            let workers = worker_caps[b].iter().enumerate().map(|(i, c)| worker(&format!("b{b}-w{i}"), *c)).collect();
            backends.insert(backend_key(&format!("b{b}")), BackendView {
                provider: format!("p{}", b % 2),
                accepted: true,
                max_sessions: backend_caps[b],
                placement: if b == 1 { Placement::Distributed } else { Placement::Packed },
                workers,
            });
        }
        let provider_caps = (0..2).map(|p| (format!("p{p}"), provider_caps[p])).collect();
        let mut world = World { backends, provider_caps, sessions: BTreeMap::new(), ledger: Ledger::new(), next: 0 };

        for op in ops {
            match op {
                Op::Create(b) => {
                    let key = session(world.next);
                    world.sessions.insert(key, (backend_key(&format!("b{b}")), world.next as i64, None));
                    world.next += 1;
                }
                Op::Delete(i) => {
                    if let Some(key) = world.sessions.keys().nth(i % world.sessions.len().max(1)).cloned() {
                        world.sessions.remove(&key);
                        world.ledger.release(&key);
                    }
                }
                Op::LoseWorker(b, w) => {
                    let bk = backend_key(&format!("b{b}"));
                    let view = world.backends.get_mut(&bk).unwrap();
                    if let Some(dead) = view.workers.get(w).map(|w| w.name.clone()) {
                        for key in world.ledger.release_worker(&bk, &dead) {
                            world.sessions.get_mut(&key).unwrap().2 = None;
                        }
                        view.workers[w].name = format!("{dead}-r");
                    }
                }
                Op::Restart => {
                    let mut rebuilt = Ledger::new();
                    for (key, (_, _, slot)) in &world.sessions {
                        if let Some(slot) = slot {
                            rebuilt.hold(key.clone(), slot.clone());
                        }
                    }
                    world.ledger = rebuilt;
                }
                Op::Admit => {
                    let pending: Vec<PendingSession> = world
                        .sessions
                        .iter()
                        .filter(|(_, (_, _, slot))| slot.is_none())
                        .map(|(key, (backend, created, _))| PendingSession { key: key.clone(), backend: backend.clone(), created: *created, misfit: None })
                        .collect();
                    let plan = plan(&world.ledger, &pending, &world.backends, &world.provider_caps);
                    for w in &plan.waiting {
                        let backend = &world.sessions[&w.key].0;
                        let created = world.sessions[&w.key].1;
                        for (admitted, slot) in &plan.admit {
                            if &slot.backend == backend {
                                prop_assert!(world.sessions[admitted].1 < created, "a newer session jumped the queue");
                            }
                        }
                    }
                    for (key, slot) in plan.admit {
                        world.ledger.hold(key.clone(), slot.clone());
                        world.sessions.get_mut(&key).unwrap().2 = Some(slot);
                    }
                }
            }
            world.check_caps()?;
        }

        // Every session ends: every count returns to zero.
        let keys: Vec<_> = world.sessions.keys().cloned().collect();
        for key in keys {
            world.sessions.remove(&key);
            world.ledger.release(&key);
        }
        prop_assert!(world.ledger.is_empty());
        for b in world.backends.keys() {
            prop_assert_eq!(world.ledger.backend_count(b), 0);
            prop_assert!(world.ledger.workers_of(b).is_empty());
        }
    }
}

#[test]
fn a_rate_limit_admits_at_its_pace_first_come_first_served_and_says_when_next() {
    let backends = one_backend(0, vec![worker("w1", 10)]);
    let mut rates = RateLimits::default();
    let limit = voice_crds::AdmissionRateLimit {
        admissions_per_second: 2,
        burst: 2,
    };
    rates.set_limits(HashMap::from([(Bucket::Provider("p".into()), limit)]));
    let queue = pending(5);
    let first = super::plan(
        &Ledger::new(),
        &queue,
        &backends,
        &Caps::default(),
        &rates,
        10_000,
    );
    let admitted: Vec<_> = first.admit.iter().map(|(k, _)| k.name.clone()).collect();
    assert_eq!(admitted, ["s0", "s1"], "the burst");
    let waiting: Vec<_> = first
        .waiting
        .iter()
        .map(|w| (w.key.name.clone(), w.blocked, w.queue_position))
        .collect();
    assert_eq!(
        waiting,
        [
            ("s2".into(), Blocked::RateLimited, Some(1)),
            ("s3".into(), Blocked::RateLimited, Some(2)),
            ("s4".into(), Blocked::RateLimited, Some(3))
        ]
    );
    assert_eq!(first.next_due, Some(10_500));
    // Half a second later exactly one more is admitted, the oldest.
    let mut ledger = Ledger::new();
    for (k, slot) in &first.admit {
        ledger.hold(k.clone(), slot.clone());
    }
    let second = super::plan(
        &ledger,
        &queue,
        &backends,
        &Caps::default(),
        &first.rates,
        10_500,
    );
    let admitted: Vec<_> = second.admit.iter().map(|(k, _)| k.name.clone()).collect();
    assert_eq!(admitted, ["s2"]);
    assert_eq!(second.next_due, Some(11_000));
}

#[test]
fn a_namespace_quota_holds_across_its_backends_and_not_beyond_its_namespace() {
    let mut backends = one_backend(0, vec![worker("w1", 10)]);
    let view = backends[&backend_key("b")].clone();
    backends.insert(backend_key("c"), view.clone());
    let other_ns = BackendKey {
        namespace: "other".into(),
        name: "b".into(),
    };
    backends.insert(other_ns.clone(), view);
    let mut queue = pending(2);
    queue.push(PendingSession {
        key: session(2),
        backend: backend_key("c"),
        created: 2,
        misfit: None,
    });
    queue.push(PendingSession {
        key: SessionKey {
            namespace: "other".into(),
            name: "s3".into(),
            uid: "uid-3".into(),
        },
        backend: other_ns,
        created: 3,
        misfit: None,
    });
    let caps = Caps {
        namespaces: HashMap::from([("ns".to_owned(), 2)]),
        ..Caps::default()
    };
    let round = super::plan(
        &Ledger::new(),
        &queue,
        &backends,
        &caps,
        &RateLimits::default(),
        0,
    );
    let admitted: Vec<_> = round.admit.iter().map(|(k, _)| k.name.clone()).collect();
    assert_eq!(
        admitted,
        ["s0", "s1", "s3"],
        "two in ns, and the other namespace is free"
    );
    assert_eq!(round.waiting.len(), 1);
    assert_eq!(round.waiting[0].key.name, "s2");
    assert_eq!(round.waiting[0].blocked, Blocked::NamespaceQuota);
}
