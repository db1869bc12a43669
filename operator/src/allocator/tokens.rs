//! Join-token Secrets an Active session still lacks: found once when a leader starts, and
//! retried with a growing delay after a failed write (see `admission_steps`).

use super::*;

impl Allocator {
    /// Active sessions whose join-token Secret is missing (a leader stopped between the
    /// status and the Secret): queued for [`Allocator::write_missing_tokens`]. One list of
    /// the Secrets' names, at start only; later failures are remembered as they happen.
    pub(super) async fn find_missing_tokens(&mut self) {
        let api: Api<Secret> = match &self.ctx.scope.namespace {
            Some(ns) => Api::namespaced(self.ctx.client.clone(), ns),
            None => Api::all(self.ctx.client.clone()),
        };
        let params = ListParams::default().fields(&format!("type={}", session_tokens::SECRET_TYPE));
        let names: HashSet<(String, String)> = match api.list_metadata(&params).await {
            Ok(list) => list
                .items
                .iter()
                .map(|m| (m.namespace().unwrap_or_default(), m.name_any()))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing join-token Secrets failed; not checking for missing ones");
                return;
            }
        };
        let now = Instant::now();
        for (key, _) in self.ledger.iter() {
            let active = self.lifecycle.get(key).map(|l| l.phase) == Some(SessionPhase::Active);
            let name = session_tokens::token_secret_name(&key.name);
            if active && !names.contains(&(key.namespace.clone(), name)) {
                self.tokens_due
                    .insert(key.clone(), (now, TOKEN_RETRY_FIRST));
            }
        }
    }

    /// Writes the join-token Secrets of Active sessions that still lack theirs, on tasks.
    pub(super) fn write_missing_tokens(
        &mut self,
        sessions: &HashMap<SessionKey, Arc<VoiceSession>>,
    ) {
        let now = Instant::now();
        let due: Vec<SessionKey> = self
            .tokens_due
            .iter()
            .filter(|(k, (at, _))| *at <= now && !self.tokens_writing.contains(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let lifecycle = sessions.get(&key).map(|s| self.lifecycle_of(&key, s));
            let (Some(session), Some(endpoint)) = (
                sessions.get(&key),
                lifecycle
                    .filter(|l| l.phase == SessionPhase::Active && !self.in_flight.contains(&key))
                    .and_then(|l| l.endpoint),
            ) else {
                // Ended, deleted or being admitted again (which writes its own Secret).
                self.tokens_due.remove(&key);
                continue;
            };
            let reference =
                reflector::ObjectRef::new(&session.spec.backend_ref.name).within(&key.namespace);
            let Some(backend) = self.backends.get(&reference) else {
                self.tokens_due.remove(&key);
                continue;
            };
            let keys = backend_keys(&self.secrets, &backend);
            let (ctx, session, results) = (
                self.ctx.clone(),
                session.clone(),
                self.tokens_written.clone(),
            );
            self.tokens_writing.insert(key.clone());
            tokio::spawn(async move {
                let result = match keys {
                    Ok(keys) => {
                        admission_steps::write_tokens(&ctx, &session, &backend, &endpoint, &keys)
                            .await
                    }
                    Err(e) => Err(e),
                };
                let _ = results.send((key, result)).await;
            });
        }
    }

    /// Takes a token Secret write's result: done, or due again after a longer delay.
    pub(super) fn token_written(&mut self, key: SessionKey, result: Result<(), String>) {
        self.tokens_writing.remove(&key);
        match result {
            Ok(()) => {
                tracing::info!(session = %key, "join-token Secret written");
                self.tokens_due.remove(&key);
            }
            Err(error) => {
                if let Some((at, delay)) = self.tokens_due.get_mut(&key) {
                    tracing::warn!(session = %key, %error, retry_in = ?*delay, "writing the join-token Secret failed");
                    *at = Instant::now() + *delay;
                    *delay = (*delay * 2).min(TOKEN_RETRY_MAX);
                }
            }
        }
    }
}

/// The backend's signing keys, from the watched signing-key Secrets (a rotation is seen as
/// soon as the watch delivers it; nothing is cached beyond the watch).
pub(super) fn backend_keys(
    secrets: &Store<Secret>,
    backend: &VoiceBackend,
) -> Result<KeySet, String> {
    let namespace = backend.namespace().unwrap_or_default();
    let name = pod_template::signing_secret_name(&backend.name_any());
    let secret = secrets
        .get(&reflector::ObjectRef::new(&name).within(&namespace))
        .ok_or_else(|| format!("Secret {namespace}/{name} is not written yet"))?;
    // Another backend's Secret of the same name is not ours to sign with.
    let owned = secret
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == backend.metadata.uid.as_ref());
    if !owned {
        return Err(format!(
            "Secret {namespace}/{name} is not owned by the backend"
        ));
    }
    signing_keys::key_set_of(&secret).map_err(|e| format!("Secret {namespace}/{name}: {e}"))
}
