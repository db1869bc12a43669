//! The host address LiveKit media flows over in the tests.
//!
//! The LiveKit Python SDK's libwebrtc gathers no candidates on a loopback interface, so a user
//! dialing a server on 127.0.0.1 never connects. The tests give the host one more address,
//! [`ADDRESS`], on a veth pair of its own (the kernel here has no `dummy` link type; a veth
//! whose both ends are up is a running, non-loopback interface just the same). livekit-server
//! binds and advertises that address; users and workers on the host reach it like any local
//! address, with no namespace and no route beyond the `/32` itself.
//!
//! Setting it up is idempotent and serialised by a lock file, so test binaries running at once
//! share it; it is left in place for the next run (removing it under a running test would cut
//! that test's media). `ip link del voicelk0` removes it by hand. Needs root (CAP_NET_ADMIN).

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::OnceLock;

/// The address livekit-server binds and advertises.
pub const ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 213, 7, 1);
/// The interface holding [`ADDRESS`]; its veth peer is [`PEER`].
pub const INTERFACE: &str = "voicelk0";
/// The other end of the pair (up, no address), there only so [`INTERFACE`] has a carrier.
pub const PEER: &str = "voicelk1";

/// [`ADDRESS`], set up on the host first if it is not there yet. Panics with the reason when it
/// cannot be.
pub fn media_address() -> Ipv4Addr {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = DONE.get_or_init(ensure) {
        panic!("setting up {ADDRESS} on {INTERFACE} for livekit-server: {e}");
    }
    ADDRESS
}

fn ensure() -> Result<(), String> {
    let lock_path = voice_cluster::livekit::livekit_venv_dir()?.with_file_name("livekit-net.lock");
    if let Some(dir) = lock_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if ip(&["link", "show", "dev", INTERFACE]).is_err() {
        ip(&[
            "link", "add", INTERFACE, "type", "veth", "peer", "name", PEER,
        ])?;
    }
    for link in [INTERFACE, PEER] {
        // No IPv6 link-local addresses: nothing but ADDRESS for ICE to gather here. A read-only
        // /proc/sys only costs extra candidates.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6"), "1");
    }
    ip(&[
        "addr",
        "replace",
        &format!("{ADDRESS}/32"),
        "dev",
        INTERFACE,
    ])?;
    ip(&["link", "set", "dev", PEER, "up"])?;
    ip(&["link", "set", "dev", INTERFACE, "up"])?;
    Ok(())
}

/// Runs `ip args`; its stderr on failure.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("running ip (Debian package iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed ({}; root is needed): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
