//! Admissions: the plan's decisions started as tasks (and unfinished ones resumed), their
//! outcomes taken back, and the status writer's reports of what the API took.

use super::*;

impl Allocator {
    /// Sessions that hold a slot but are not Active yet (an admission to retry, one an
    /// earlier leader reserved, or a status an earlier version wrote ahead): admit them onto
    /// the worker that holds the slot, which answers ALREADY_RESERVED if it reserved before.
    pub(super) fn finish_reserved(
        &mut self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
        backends: &HashMap<BackendKey, (BackendView, BTreeMap<String, String>)>,
    ) {
        let now = Instant::now();
        let unfinished: Vec<(SessionKey, Slot)> = (self.lists.unfinished.iter())
            .filter(|k| !self.in_flight.contains(*k) && !self.backoff.session_waits(k, now))
            .filter(|k| {
                sessions
                    .get(*k)
                    .is_some_and(|s| self.phase_of(k, s) == SessionPhase::Pending)
            })
            .filter_map(|k| Some((k.clone(), self.ledger.slot(k)?.clone())))
            .collect();
        for (key, slot) in unfinished {
            let (Some(session), Some((_, ips))) = (sessions.get(&key), backends.get(&slot.backend))
            else {
                continue;
            };
            let worker = SessionWorker {
                pod: slot.worker.clone(),
                pod_ip: ips.get(&slot.worker).cloned(),
            };
            self.start(session.clone(), key, worker, true);
        }
    }

    /// Plans the pending sessions, starts the admissions that fit, and records why the rest wait.
    pub(super) fn admit_pending(
        &mut self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
        backends: &HashMap<BackendKey, (BackendView, BTreeMap<String, String>)>,
        now: Timestamp,
    ) {
        let room_claims = self.room_claims(sessions);
        let pending: Vec<PendingSession> = (self.lists.unplaced.iter())
            .filter_map(|k| sessions.get_key_value(k))
            .filter(|(k, s)| {
                !self.in_flight.contains(*k)
                    && !self.backoff.session_waits(k, Instant::now())
                    && self.ledger.slot(k).is_none()
                    && self.phase_of(k, s) == SessionPhase::Pending
            })
            .map(|(k, s)| PendingSession {
                key: k.clone(),
                backend: backend_key_of(s),
                created: super::rooms::created_ms(s),
                misfit: self
                    .misfit(s, &k.namespace)
                    .or_else(|| self.room_misfit(&room_claims, k, s)),
            })
            .collect();
        if pending.is_empty() {
            self.record_waiting(sessions, &[]);
            return;
        }
        let views: HashMap<BackendKey, BackendView> = backends
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        let caps = admission_plan::Caps {
            providers: self
                .providers
                .state()
                .iter()
                .map(|p| {
                    let cap = p.spec.capabilities.max_concurrent_sessions;
                    (p.name_any(), u32::try_from(cap).unwrap_or(0))
                })
                .collect(),
            namespaces: self
                .namespaces
                .state()
                .iter()
                .filter_map(|n| {
                    let quota = n
                        .annotations()
                        .get(admission_plan::NAMESPACE_QUOTA_ANNOTATION)?;
                    Some((n.name_any(), quota.trim().parse().unwrap_or(0)))
                })
                .collect(),
        };
        self.rates.set_limits(rate_limit::limits_of(
            self.providers.state().iter().map(|p| &**p),
            self.backends.state().iter().map(|b| &**b),
        ));
        let now_ms = now.as_millisecond();
        let plan = admission_plan::plan(&self.ledger, &pending, &views, &caps, &self.rates, now_ms);
        self.rates = plan.rates;
        self.rate_wake = plan.next_due.map(|due| {
            Instant::now() + Duration::from_millis(u64::try_from(due - now_ms).unwrap_or(0))
        });
        self.record_waiting(sessions, &plan.waiting);
        for (key, slot) in plan.admit {
            let Some(session) = sessions.get(&key) else {
                continue;
            };
            let ip = backends
                .get(&slot.backend)
                .and_then(|(_, ips)| ips.get(&slot.worker).cloned());
            let worker = SessionWorker {
                pod: slot.worker.clone(),
                pod_ip: ip,
            };
            self.hold_slot(key.clone(), slot);
            if self.proposed.contains_key(&key) {
                self.in_flight.insert(key.clone());
                self.deferred.insert(key, (session.clone(), worker));
            } else {
                self.start(session.clone(), key, worker, false);
            }
        }
        // The new holders must be known before their workers can report: a client connects
        // only after the admission wrote its token, but the waiting writes below may be slow.
        self.publish_roster(backends);
        for waiting in plan.waiting {
            let Some(session) = sessions.get(&waiting.key) else {
                continue;
            };
            // The latest decision, applied or still with the writer: a wait is counted once,
            // and an end the writer has not applied yet is not turned back into a wait.
            let lifecycle = self.lifecycle_of(&waiting.key, session);
            // A session that lost its worker keeps saying so while it waits.
            let why = if lifecycle.admitted_reason() == Some(reason::WORKER_LOST) {
                reason::WORKER_LOST
            } else {
                waiting.blocked.reason()
            };
            let message = waiting.detail.clone().unwrap_or_else(|| {
                waiting_message(waiting.blocked, &session.spec.backend_ref.name)
            });
            let next = lifecycle
                .pending(
                    why,
                    &message,
                    waiting
                        .queue_position
                        .map(|p| i32::try_from(p).unwrap_or(i32::MAX)),
                    Time(now),
                )
                .observing(session.metadata.generation);
            if next == lifecycle {
                continue;
            }
            let due = self
                .waiting_written
                .get(&waiting.key)
                .is_none_or(|at| at.elapsed() >= WAITING_WRITE_INTERVAL);
            // The reason changing is news; a shifted position can wait for the next interval.
            let new_reason = next.admitted_reason() != lifecycle.admitted_reason();
            if new_reason {
                self.ctx
                    .metrics
                    .session_waits
                    .with_label_values(&[why])
                    .inc();
            }
            if due || new_reason {
                self.waiting_written
                    .insert(waiting.key.clone(), Instant::now());
                self.write(&waiting.key, next);
            }
        }
    }

    /// Starts an admission task for `session` onto `worker`; its slot is already in the ledger.
    pub(super) fn start(
        &mut self,
        session: Arc<VoiceSession>,
        key: SessionKey,
        worker: SessionWorker,
        resume: bool,
    ) {
        let backend_ref =
            reflector::ObjectRef::new(&session.spec.backend_ref.name).within(&key.namespace);
        let Some(backend) = self.backends.get(&backend_ref) else {
            return;
        };
        let lifecycle = self.lifecycle_of(&key, &session);
        let ctx = self.ctx.clone();
        let outcomes = self.outcomes.clone();
        let permits = self.admissions.clone();
        let keys = backend_keys(&self.secrets, &backend);
        self.metadata.reserved(
            &key,
            session.metadata.generation,
            session.spec.metadata.as_ref(),
        );
        self.touch(&key);
        self.in_flight.insert(key.clone());
        tokio::spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return;
            };
            let started = Instant::now();
            let live_kit = match &keys {
                Ok(_) => session_livekit::prepare(&ctx.client, &session, &backend).await,
                Err(_) => Ok(None),
            };
            let outcome = match (keys, live_kit) {
                (Ok(signing_keys), Ok(live_kit)) => {
                    let admission = Admission {
                        session: (*session).clone(),
                        backend: (*backend).clone(),
                        lifecycle,
                        worker,
                        signing_keys,
                        live_kit,
                    };
                    admission_steps::admit(&ctx, admission).await
                }
                // A resumed slot may be reserved on its worker: keep it.
                (Err(e), _) if resume => Outcome::Retry(e),
                (_, Err(held)) if resume => Outcome::Retry(held.message),
                (Err(e), _) => Outcome::NotStarted(e),
                (_, Err(held)) => Outcome::Held(held),
            };
            ctx.metrics
                .admission_step_duration
                .observe(started.elapsed().as_secs_f64());
            if let Outcome::Admitted { .. } = &outcome
                && let Some(created) = session.metadata.creation_timestamp.as_ref()
            {
                let waited = Timestamp::now().duration_since(created.0);
                ctx.metrics
                    .admission_latency
                    .observe(waited.as_secs_f64().max(0.0));
            }
            let _ = outcomes.send((key, outcome)).await;
        });
    }

    /// Takes an admission's outcome into the loop's state.
    pub(super) fn settle(&mut self, key: SessionKey, outcome: Outcome) {
        let ended = self.ended_in_flight.remove(&key);
        self.settle_outcome(key, outcome);
        // Checked again against the ledger as it now stands: an admission that gave its
        // slot back has nothing left for the worker to end.
        if let Some(end) = ended {
            self.worker_ended(end);
        }
    }

    fn settle_outcome(&mut self, key: SessionKey, outcome: Outcome) {
        self.touch(&key);
        self.in_flight.remove(&key);
        let result = match &outcome {
            Outcome::Admitted { .. } => "admitted",
            Outcome::Refused { .. } => "refused",
            Outcome::Retry { .. } => "retry",
            Outcome::NotStarted(_) => "not_started",
            Outcome::Held(_) => "held",
        };
        self.ctx
            .metrics
            .admissions
            .with_label_values(&[result])
            .inc();
        let worker = self
            .ledger
            .slot(&key)
            .map(|slot| format!("{}/{}", slot.backend.namespace, slot.worker));
        match outcome {
            Outcome::Admitted {
                lifecycle,
                token_written,
            } => {
                if let Some(worker) = &worker {
                    self.backoff.took(worker, &key);
                }
                self.waiting_written.remove(&key);
                if token_written {
                    self.tokens_due.remove(&key);
                } else {
                    self.tokens_due
                        .insert(key.clone(), (Instant::now(), TOKEN_RETRY_FIRST));
                }
                self.lifecycle_changed.insert(key.clone());
                self.lifecycle.insert(key, *lifecycle);
            }
            Outcome::Refused { refusal, error } => {
                tracing::info!(session = %key, %error, ?refusal, "worker refused the reservation; backing off, then planning again");
                if let Some(worker) = &worker {
                    self.backoff.refused(worker, &key, refusal, Instant::now());
                }
                self.release_slot(&key);
            }
            Outcome::Retry(error) => {
                // The slot stays held (the worker may have reserved it); this session alone
                // waits a little before the next try.
                tracing::warn!(session = %key, %error, "admission step failed; retrying");
                if let Some(worker) = &worker {
                    self.backoff
                        .refused(worker, &key, Refusal::Session, Instant::now());
                }
            }
            Outcome::NotStarted(error) => {
                tracing::warn!(session = %key, %error, "admission did not start; planning again");
                self.release_slot(&key);
            }
            Outcome::Held(held) => {
                tracing::warn!(session = %key, reason = held.reason, message = %held.message, "admission held before the worker was asked; waiting");
                self.release_slot(&key);
                if let Some(worker) = &worker {
                    self.backoff
                        .refused(worker, &key, Refusal::Session, Instant::now());
                }
                if let Some(session) = self.sessions.get(&key.namespace, &key.name).cloned() {
                    let lifecycle = self.lifecycle_of(&key, &session);
                    let next = lifecycle
                        .pending(held.reason, &held.message, None, Time(Timestamp::now()))
                        .observing(session.metadata.generation);
                    if next != lifecycle {
                        self.write(&key, next);
                    }
                }
            }
        }
    }

    /// Hands `next` to the status writer as the session's lifecycle; it is remembered as
    /// applied only once the writer reports that the API took it ([`Allocator::written`]).
    pub(super) fn write(&mut self, key: &SessionKey, next: Lifecycle) {
        if self.proposed.get(key) == Some(&next) {
            return;
        }
        self.touch(key);
        if self.writer.submit(
            Target::Session(key.clone()),
            Body::Lifecycle(Box::new(next.clone())),
        ) {
            self.proposed.insert(key.clone(), next);
        }
    }

    /// Takes a finished write into the loop's state, and starts an admission that waited
    /// for it.
    pub(super) fn written(&mut self, done: Done) {
        match (done.target, done.body) {
            (Target::Session(key), Body::Lifecycle(lifecycle)) => {
                self.touch(&key);
                let lifecycle = *lifecycle;
                if self.proposed.get(&key) == Some(&lifecycle) {
                    self.proposed.remove(&key);
                }
                if done.applied {
                    self.lifecycle.insert(key.clone(), lifecycle);
                    self.lifecycle_changed.insert(key.clone());
                }
                if !self.proposed.contains_key(&key)
                    && let Some((mut session, worker)) = self.deferred.remove(&key)
                {
                    // The admission's write is conditional on the session's resourceVersion:
                    // the one this write made, which the watch may not have delivered yet.
                    if let Some(rv) = done.resource_version {
                        Arc::make_mut(&mut session).metadata.resource_version = Some(rv);
                    }
                    self.in_flight.remove(&key);
                    self.start(session, key, worker, false);
                }
            }
            (Target::Backend(key), Body::Pending(pending)) if done.applied => {
                self.counts_written.insert(
                    format!("backend/{}/{}", key.namespace, key.name),
                    (pending, 0),
                );
            }
            (Target::Provider(name), Body::Counts(in_use, pending)) if done.applied => {
                self.counts_written
                    .insert(format!("provider/{name}"), (in_use, pending));
            }
            _ => {}
        }
    }
}
