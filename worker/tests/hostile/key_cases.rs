//! Join-token keys rotating under a running worker, the way the operator rotates them: the
//! worker reads `SESSION_SIGNING_KEYS_FILE` (the mounted `keys.json`) and the test rewrites it.
//! A live call goes on through every change; a token is checked with the key its `kid` names;
//! a retired key verifies until it is pruned; a broken file changes nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use voice_proto::token::KeySet;

use crate::common::{PATIENCE, Worker, token, token_with_keys};
use crate::hostile::{FAST_WS, RawWs, frame, recovered_with_keys, reserve_with, ws_path};

const KEY_1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const KEY_2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn keys_file() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("voice-key-cases-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir.join("keys.json")
}

/// Replaces the file the way the node agent (and the kubelet) does: write aside, rename.
fn write(file: &Path, bytes: &[u8]) {
    let aside = file.with_extension("tmp");
    std::fs::write(&aside, bytes).unwrap_or_else(|e| panic!("{e}"));
    std::fs::rename(&aside, file).unwrap_or_else(|e| panic!("{e}"));
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The upgrade of session `id` with `token`: the client, or the refusal's status line and code.
async fn upgrade(worker: &Worker, id: &str, token: &str) -> Result<RawWs, String> {
    RawWs::connect(worker, &ws_path(id, token), &[])
        .await
        .map(|(ws, _)| ws)
}

/// Retries the upgrade until it is taken (the worker re-reads the file every second).
async fn upgrade_once_reloaded(worker: &Worker, id: &str, token: &str) -> RawWs {
    let started = Instant::now();
    loop {
        match upgrade(worker, id, token).await {
            Ok(ws) => return ws,
            Err(refusal) if started.elapsed() > PATIENCE => {
                panic!("{id} never connected: {refusal}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Waits until the worker no longer holds key `retired`: a token it signed for another
/// session is then refused as `TokenUnknownKey` rather than `TokenWrongSession` (the key is
/// looked up before the claims are read), so the probe never takes a connection.
async fn wait_until_pruned(worker: &Worker, id: &str, retired: &KeySet) {
    let probe = token_with_keys(retired, "team/elsewhere", "uid-elsewhere", 600);
    let started = Instant::now();
    loop {
        let refusal = upgrade(worker, id, &probe).await.err().unwrap_or_default();
        if refusal.contains("\"code\":\"TokenUnknownKey\"") {
            return;
        }
        assert!(
            refusal.contains("\"code\":\"TokenWrongSession\"") && started.elapsed() < PATIENCE,
            "the retired key was not dropped: {refusal}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Audio in, audio back: the echo call `ws` is alive.
async fn still_talking(ws: &mut RawWs, when: &str) {
    ws.send(&frame(true, 0x2, &[0x21u8; 1_920])).await;
    let heard = ws.listen(Duration::from_millis(800)).await;
    assert!(
        !heard.binary.is_empty() && heard.close.is_none() && !heard.eof,
        "the live call stopped {when}: {heard:?}"
    );
}

#[tokio::test]
async fn rotated_keys_keep_live_calls_and_old_tokens_until_pruned_and_a_broken_file_changes_nothing()
 {
    let file = keys_file();
    let mut keys = KeySet::new("k1".into(), KEY_1.into());
    write(&file, keys.to_json().as_bytes());
    let path = file.display().to_string();
    let mut env = FAST_WS.to_vec();
    env.push(("SESSION_SIGNING_KEYS_FILE", &path));
    let worker = Worker::start_with_env(5, &env);
    for id in ["live", "old", "new", "late"] {
        reserve_with(&worker, &format!("team/{id}"), &format!("uid-{id}"), "").await;
    }
    let first = keys.clone();

    let mut live = upgrade(
        &worker,
        "team/live",
        &token_with_keys(&keys, "team/live", "uid-live", 600),
    )
    .await
    .unwrap_or_else(|e| panic!("a k1 token: {e}"));
    still_talking(&mut live, "before any rotation").await;
    // The file is in use, not the bare SESSION_SIGNING_KEY the process also has: a token
    // without a key id names no key of the set.
    let bare = upgrade(&worker, "team/old", &token("team/old", "uid-old", 600)).await;
    let refusal = bare.err().unwrap_or_default();
    assert!(
        refusal.starts_with("HTTP/1.1 401") && refusal.contains("\"code\":\"TokenUnknownKey\""),
        "{refusal}"
    );

    // Rotation: k2 signs, k1 still verifies.
    keys.rotate("k2".into(), KEY_2.into(), now());
    write(&file, keys.to_json().as_bytes());
    let _new = upgrade_once_reloaded(
        &worker,
        "team/new",
        &token_with_keys(&keys, "team/new", "uid-new", 600),
    )
    .await;
    still_talking(&mut live, "after the rotation").await;
    let _old = upgrade(
        &worker,
        "team/old",
        &token_with_keys(&first, "team/old", "uid-old", 600),
    )
    .await
    .unwrap_or_else(|e| panic!("a token of the retired key, within its lifetime: {e}"));

    // Pruned: k1 tokens are refused, the call that joined with one goes on.
    assert!(keys.prune(now() + 3_600, 3_600));
    write(&file, keys.to_json().as_bytes());
    wait_until_pruned(&worker, "team/late", &first).await;
    let refusal = upgrade(
        &worker,
        "team/late",
        &token_with_keys(&first, "team/late", "uid-late", 600),
    )
    .await
    .err()
    .unwrap_or_default();
    assert!(
        refusal.starts_with("HTTP/1.1 401") && refusal.contains("\"code\":\"TokenUnknownKey\""),
        "{refusal}"
    );
    still_talking(&mut live, "after the old key was pruned").await;

    // A half-written file and then a missing one: the last good set stays.
    write(&file, b"{\"current\":\"k3\",\"ke");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    std::fs::remove_file(&file).unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut late = upgrade(
        &worker,
        "team/late",
        &token_with_keys(&keys, "team/late", "uid-late", 600),
    )
    .await
    .unwrap_or_else(|e| panic!("a k2 token after a broken keys file: {e}"));
    still_talking(&mut late, "after a broken keys file").await;
    still_talking(&mut live, "after a broken keys file").await;

    drop((live, late, _new, _old));
    recovered_with_keys(&worker, &keys).await;
}
