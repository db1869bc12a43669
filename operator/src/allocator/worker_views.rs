//! The allocator's view of each backend's workers, and the calls that free a slot on one.

use super::*;

impl Allocator {
    /// Asks the worker (by pod name, via the backend's pods) to free a slot; best effort: the
    /// repair pass catches what fails here.
    pub(super) fn release_on_worker(&self, key: &SessionKey, slot: &Slot, why: &str) {
        if !self.ctx.fence.is_open() {
            return;
        }
        let Some(ip) = self.pod_ip(&slot.backend.namespace, &slot.worker) else {
            return;
        };
        let ctx = self.ctx.clone();
        let (id, uid, why) = (key.session_id(), key.uid.clone(), why.to_owned());
        tokio::spawn(async move {
            if let Err(e) = ctx
                .workers
                .release(&ip, &id, &uid, &why, WORKER_TIMEOUT)
                .await
            {
                tracing::warn!(session = %id, error = %e, "releasing the slot on the worker failed; the repair pass will retry");
            }
        });
    }

    pub(super) fn pod_ip(&self, namespace: &str, pod: &str) -> Option<String> {
        let reference = reflector::ObjectRef::new(pod).within(namespace);
        self.pods
            .get(&reference)
            .and_then(|p| p.status.as_ref()?.pod_ip.clone())
    }

    /// The allocator's view of every backend: acceptance, caps, placement and workers.
    pub(super) fn backend_views(
        &self,
    ) -> HashMap<BackendKey, (BackendView, BTreeMap<String, String>)> {
        let now = Instant::now();
        let mut pods_by_backend: HashMap<BackendKey, Vec<Arc<Pod>>> = HashMap::new();
        for pod in self.pods.state() {
            let Some(backend) = pod.labels().get(pod_template::LABEL_BACKEND).cloned() else {
                continue;
            };
            pods_by_backend
                .entry(BackendKey {
                    namespace: pod.namespace().unwrap_or_default(),
                    name: backend,
                })
                .or_default()
                .push(pod);
        }
        let mut views = HashMap::new();
        for b in self.backends.state() {
            let key = BackendKey {
                namespace: b.namespace().unwrap_or_default(),
                name: b.name_any(),
            };
            let status = b.status.clone().unwrap_or_default();
            let accepted = b.meta().deletion_timestamp.is_none()
                && status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == ACCEPTED && c.status == "True");
            let capacity = u32::try_from(b.spec.workers.sessions_per_worker).unwrap_or(0);
            let healthy: HashMap<&str, voice_crds::WorkerPhase> = status
                .worker_statuses
                .iter()
                .map(|w| (w.name.as_str(), w.phase))
                .collect();
            let mut ips = BTreeMap::new();
            let workers = pods_by_backend
                .get(&key)
                .map(|pods| {
                    pods.iter()
                        .filter_map(|p| {
                            let name = p.name_any();
                            let ip = p.status.as_ref()?.pod_ip.clone()?;
                            let facts = worker_pod_facts::of(p);
                            let health = healthy.get(name.as_str()).copied();
                            let draining = world::draining(&facts, health);
                            let ready = world::takes_sessions(&facts, health)
                                && !self
                                    .backoff
                                    .worker_waits(&format!("{}/{name}", key.namespace), now);
                            self.ctx.workers.register(&ip, &key.namespace, &key.name);
                            ips.insert(name.clone(), ip);
                            Some(WorkerView {
                                name,
                                ready,
                                draining,
                                capacity,
                                held: 0,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            views.insert(
                key,
                (
                    BackendView {
                        provider: b.spec.provider.clone(),
                        accepted,
                        max_sessions: u32::try_from(b.spec.max_sessions).unwrap_or(0),
                        placement: b.spec.placement,
                        workers,
                    },
                    ips,
                ),
            );
        }
        views
    }
}
