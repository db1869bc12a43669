//! The repair pass: reservations no session explains are released on their worker, and
//! Active sessions a worker no longer holds are ended (decisions in `worker_repair`).

use super::*;

impl Allocator {
    /// Releases reservations that workers hold but the ledger does not (an admission refused
    /// after a timeout, a session deleted while the operator was down).
    pub(super) fn repair_orphans(
        &self,
        backends: &HashMap<BackendKey, (BackendView, BTreeMap<String, String>)>,
    ) {
        // Each known session with the IP of the worker the ledger says holds it: the same
        // session held by another worker is an orphan there (an earlier leader's reservation
        // on a worker that did not answer at takeover).
        let ip_of = |slot: &Slot| {
            backends
                .get(&slot.backend)
                .and_then(|(_, ips)| ips.get(&slot.worker).cloned())
        };
        let mut known = worker_repair::Known::default();
        for (key, slot) in self.ledger.iter() {
            // Admissions in flight may hold their slot on any worker: entered below.
            if self.in_flight.contains(key) {
                continue;
            }
            let id = (key.session_id(), key.uid.clone());
            let ip = ip_of(slot);
            if let Some(ip) = &ip
                && self.lifecycle.get(key).map(|l| l.phase) == Some(SessionPhase::Active)
            {
                known
                    .active
                    .entry(ip.clone())
                    .or_default()
                    .push((key.clone(), slot.worker.clone()));
            }
            known.holders.insert(id, ip);
        }
        for k in &self.in_flight {
            known.holders.insert((k.session_id(), k.uid.clone()), None);
        }
        let ips: BTreeSet<String> = backends
            .values()
            .flat_map(|(_, ips)| ips.values().cloned())
            .collect();
        let ctx = self.ctx.clone();
        let repairs = self.repairs.clone();
        tokio::spawn(async move {
            for ip in ips {
                let Ok(listed) = ctx.workers.list_sessions(&ip, WORKER_TIMEOUT).await else {
                    continue;
                };
                let held: Vec<worker_repair::Held> = listed
                    .into_iter()
                    .map(|s| worker_repair::Held {
                        session_id: s.session_id,
                        uid: s.uid,
                        reserved_at: s.reserved_at.map(|t| t.seconds),
                    })
                    .collect();
                let grace = i64::try_from(REPAIR_INTERVAL.as_secs()).unwrap_or(i64::MAX);
                let findings =
                    worker_repair::compare(&ip, &held, &known, Timestamp::now().as_second(), grace);
                for (key, worker) in findings.ended_unseen {
                    let _ = repairs.send((key, worker)).await;
                }
                for (session_id, uid) in findings.orphans {
                    tracing::warn!(session = %session_id, %uid, worker = %ip, "worker holds a slot the API does not know; releasing it");
                    ctx.metrics.orphans_released.inc();
                    let _ = ctx
                        .workers
                        .release(&ip, &session_id, &uid, "Orphaned", WORKER_TIMEOUT)
                        .await;
                }
            }
        });
    }

    /// The repair pass found `key` Active on `worker` in the ledger, but the worker does not
    /// hold it: it ended there unseen. End it here too, if nothing moved it meanwhile.
    pub(super) fn ended_unseen(&mut self, key: SessionKey, worker: String) {
        let still = self.ledger.slot(&key).is_some_and(|s| s.worker == worker)
            && !self.in_flight.contains(&key)
            && self.lifecycle.get(&key).map(|l| l.phase) == Some(SessionPhase::Active);
        if !still {
            return;
        }
        let Some(session) = self.sessions.get(&key.namespace, &key.name).cloned() else {
            return;
        };
        tracing::warn!(session = %key, %worker, "the worker no longer holds an Active session; ending it");
        self.end(
            &session,
            &key,
            SessionPhase::Completed,
            reason::ENDED_ON_WORKER,
            "the worker no longer holds the session: it ended there while the operator was not listening",
            Timestamp::now(),
        );
    }
}
