//! Session counts on backends and providers, and the allocator's gauges.

use super::*;

impl Allocator {
    /// Publishes each backend's held and waiting sessions, and writes the counts on backends
    /// and providers when they changed. Held counts are the ledger's; waiting ones come from
    /// the unplaced worklist, so this is O(backends + waiting), not O(sessions).
    pub(super) fn write_counts(&mut self, sessions: &HashMap<SessionKey, Arc<VoiceSession>>) {
        let mut per_backend: HashMap<BackendKey, BackendSessions> = HashMap::new();
        for b in self.backends.state() {
            let key = BackendKey {
                namespace: b.namespace().unwrap_or_default(),
                name: b.name_any(),
            };
            let active = self.ledger.backend_count(&key);
            per_backend.entry(key).or_default().active = active;
        }
        let mut provider_pending: HashMap<String, i32> = HashMap::new();
        for key in &self.lists.unplaced {
            let Some(session) = sessions.get(key) else {
                continue;
            };
            if self.ledger.slot(key).is_some()
                || self.phase_of(key, session) != SessionPhase::Pending
                // A session that cannot run as it is asks for no worker.
                || self
                    .lifecycle_of(key, session)
                    .admitted_reason()
                    .is_some_and(Misfit::is_reason)
            {
                continue;
            }
            let backend = backend_key_of(session);
            if let Some(provider) = self.provider_of(&backend) {
                *provider_pending.entry(provider).or_default() += 1;
            }
            per_backend.entry(backend).or_default().pending += 1;
        }
        self.ctx.session_counts.publish(per_backend.clone());
        if self
            .counts_at
            .is_some_and(|at| at.elapsed() < COUNTS_WRITE_INTERVAL)
        {
            return;
        }
        self.counts_at = Some(Instant::now());
        for b in self.backends.state() {
            let key = BackendKey {
                namespace: b.namespace().unwrap_or_default(),
                name: b.name_any(),
            };
            let pending =
                i32::try_from(per_backend.get(&key).map_or(0, |c| c.pending)).unwrap_or(i32::MAX);
            let id = format!("backend/{}/{}", key.namespace, key.name);
            let observed = b.status.as_ref().and_then(|s| s.pending_sessions);
            if self.counts_written.get(&id) == Some(&(pending, 0)) && observed == Some(pending) {
                continue;
            }
            self.writer
                .submit(Target::Backend(key), Body::Pending(pending));
        }
        // A deleted provider's gauges would otherwise be scraped (and alerted on) forever.
        let providers: HashSet<String> = self
            .providers
            .state()
            .iter()
            .map(|p| p.name_any())
            .collect();
        for gone in self
            .metric_providers
            .iter()
            .filter(|p| !providers.contains(*p))
        {
            let m = &self.ctx.metrics;
            let _ = m.provider_session_limit.remove_label_values(&[gone]);
            let _ = m.provider_sessions.remove_label_values(&[gone, "in_use"]);
            let _ = m.provider_sessions.remove_label_values(&[gone, "pending"]);
        }
        self.metric_providers = providers;
        for p in self.providers.state() {
            let name = p.name_any();
            let in_use = i32::try_from(self.ledger.provider_count(&name)).unwrap_or(i32::MAX);
            let pending = provider_pending.get(&name).copied().unwrap_or(0);
            self.ctx
                .metrics
                .provider_session_limit
                .with_label_values(&[&name])
                .set(i64::from(p.spec.capabilities.max_concurrent_sessions));
            let id = format!("provider/{name}");
            let observed = p
                .status
                .as_ref()
                .map_or((0, 0), |s| (s.sessions_in_use, s.sessions_pending));
            if self.counts_written.get(&id) == Some(&(in_use, pending))
                && observed == (in_use, pending)
            {
                continue;
            }
            self.writer.submit(
                Target::Provider(name.clone()),
                Body::Counts(in_use, pending),
            );
            self.ctx
                .metrics
                .provider_sessions
                .with_label_values(&[&name, "in_use"])
                .set(i64::from(in_use));
            self.ctx
                .metrics
                .provider_sessions
                .with_label_values(&[&name, "pending"])
                .set(i64::from(pending));
        }
    }

    /// `voice_sessions_waiting{backend,reason}`; reasons that no longer apply drop to 0.
    pub(super) fn record_waiting(
        &mut self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
        waiting: &[admission_plan::Waiting],
    ) {
        let mut counts: HashMap<(String, &'static str), i64> = HashMap::new();
        for w in waiting {
            let Some(s) = sessions.get(&w.key) else {
                continue;
            };
            let backend = format!("{}/{}", w.key.namespace, s.spec.backend_ref.name);
            *counts.entry((backend, w.blocked.reason())).or_default() += 1;
        }
        for key in self.waiting_labels.drain() {
            counts.entry(key).or_default();
        }
        for ((backend, reason), n) in &counts {
            self.ctx
                .metrics
                .sessions_waiting
                .with_label_values(&[backend.as_str(), reason])
                .set(*n);
        }
        self.waiting_labels = counts
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, _)| k)
            .collect();
    }

    pub(super) fn publish_metrics(&self) {
        self.ctx
            .metrics
            .ledger_sessions
            .set(i64::try_from(self.ledger.len()).unwrap_or(i64::MAX));
        self.ctx
            .metrics
            .admissions_in_flight
            .set(i64::try_from(self.in_flight.len()).unwrap_or(i64::MAX));
    }
}
