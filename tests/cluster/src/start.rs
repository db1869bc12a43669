//! The start sequence: certificates, kubeconfigs, etcd, kube-apiserver, kube-controller-manager,
//! each awaited before the next needs it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::binaries::{Binaries, progress};
use crate::state::{Ports, ProcessRecord, State};
use crate::{Error, health, kubeconfig, layout, pki, processes};

/// Controllers run by kube-controller-manager: only what an apiserver without nodes needs for
/// the behaviour our tests rely on (garbage collection of owned objects, namespace deletion).
const CONTROLLERS: &str = "garbage-collector-controller,namespace-controller";

/// Upper bound for etcd to listen.
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound for the apiserver to answer `/readyz` after start (cold etcd, 2 cores).
const APISERVER_TIMEOUT: Duration = Duration::from_secs(120);

/// Upper bound for kube-controller-manager to serve its health port.
const CONTROLLER_MANAGER_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of a crashed process's log shown in the error.
const TAIL_LINES: usize = 30;

/// A process we started in this call, kept to notice an early exit.
struct Started {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

/// Starts a fresh control plane in the (empty) state dir. On failure, what was started is
/// stopped again and the state file still lists it for `down`.
pub fn start(state_dir: &Path, bins: &Binaries) -> Result<State, Error> {
    let mut started = Vec::new();
    let result = start_inner(state_dir, bins, &mut started);
    if result.is_err() {
        let records: Vec<ProcessRecord> = started.iter().map(|s| record(s, bins)).collect();
        let _ = processes::stop_all(&records);
        for s in &mut started {
            let _ = s.child.try_wait();
        }
    }
    result
}

fn start_inner(
    state_dir: &Path,
    bins: &Binaries,
    started: &mut Vec<Started>,
) -> Result<State, Error> {
    let [etcd_client, etcd_peer, apiserver, controller_manager] = processes::free_ports::<4>()?;
    let ports = Ports {
        etcd_client,
        etcd_peer,
        apiserver,
        controller_manager,
    };
    let server = format!("https://127.0.0.1:{apiserver}");

    let pki = pki::generate(&state_dir.join("pki"))?;
    let admin_kubeconfig = layout::kubeconfig_path();
    kubeconfig::write(
        &admin_kubeconfig,
        &server,
        &pki.ca.cert_pem,
        "admin",
        &pki.admin,
    )?;
    let kcm_kubeconfig = state_dir.join("kube-controller-manager.kubeconfig");
    kubeconfig::write(
        &kcm_kubeconfig,
        &server,
        &pki.ca.cert_pem,
        "kube-controller-manager",
        &pki.controller_manager,
    )?;

    let mut state = State {
        server: server.clone(),
        bin_dir: bins.dir().to_owned(),
        ports,
        processes: Vec::new(),
    };
    let path = |p: &Path| p.display().to_string();

    progress(&format!("starting etcd on 127.0.0.1:{etcd_client}…"));
    let etcd_url = format!("http://127.0.0.1:{etcd_client}");
    let peer_url = format!("http://127.0.0.1:{etcd_peer}");
    let etcd_args = vec![
        "--name=voice-cluster".to_owned(),
        format!("--data-dir={}", path(&state_dir.join("etcd"))),
        format!("--listen-client-urls={etcd_url}"),
        format!("--advertise-client-urls={etcd_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=voice-cluster={peer_url}"),
        // Throw-away data: fsync only costs time.
        "--unsafe-no-fsync".to_owned(),
    ];
    spawn(
        state_dir,
        bins,
        &mut state,
        started,
        "etcd",
        &bins.etcd(),
        &etcd_args,
    )?;
    // The apiserver would retry, but its log would fill with dial errors and an etcd crash
    // would surface as an apiserver timeout instead of etcd's own log.
    let apiserver_log = state_dir.join("kube-apiserver.log");
    wait_until(
        state_dir,
        started,
        "etcd",
        ETCD_TIMEOUT,
        &apiserver_log,
        || port_open(etcd_client),
    )?;

    progress(&format!("starting kube-apiserver on {server}…"));
    let apiserver_args = vec![
        "--bind-address=127.0.0.1".to_owned(),
        "--advertise-address=127.0.0.1".to_owned(),
        format!("--secure-port={apiserver}"),
        format!("--cert-dir={}", path(&state_dir.join("apiserver-certs"))),
        format!("--tls-cert-file={}", path(&pki.apiserver.cert_file)),
        format!("--tls-private-key-file={}", path(&pki.apiserver.key_file)),
        format!("--client-ca-file={}", path(&pki.ca.cert_file)),
        "--authorization-mode=RBAC".to_owned(),
        "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
        format!(
            "--service-account-key-file={}",
            path(&pki.service_account_pub)
        ),
        format!(
            "--service-account-signing-key-file={}",
            path(&pki.service_account_key)
        ),
        // No service-account controllers run, so the admission plugin would reject every pod.
        "--disable-admission-plugins=ServiceAccount".to_owned(),
        "--allow-privileged=true".to_owned(),
        format!("--etcd-servers={etcd_url}"),
    ];
    spawn(
        state_dir,
        bins,
        &mut state,
        started,
        "kube-apiserver",
        &bins.kube_apiserver(),
        &apiserver_args,
    )?;

    let kubectl = bins.kubectl();
    wait_until(
        state_dir,
        started,
        "kube-apiserver",
        APISERVER_TIMEOUT,
        &apiserver_log,
        || {
            health::apiserver_ready(&kubectl, &admin_kubeconfig)?;
            health::default_namespace_exists(&kubectl, &admin_kubeconfig)
        },
    )?;

    progress("starting kube-controller-manager (garbage collector, namespace controller)…");
    let kcm = path(&kcm_kubeconfig);
    let kcm_args = vec![
        format!("--kubeconfig={kcm}"),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--secure-port={controller_manager}"),
        format!(
            "--cert-dir={}",
            path(&state_dir.join("controller-manager-certs"))
        ),
        format!("--controllers={CONTROLLERS}"),
        "--leader-elect=false".to_owned(),
        "--use-service-account-credentials=false".to_owned(),
    ];
    spawn(
        state_dir,
        bins,
        &mut state,
        started,
        "kube-controller-manager",
        &bins.kube_controller_manager(),
        &kcm_args,
    )?;
    wait_until(
        state_dir,
        started,
        "kube-controller-manager",
        CONTROLLER_MANAGER_TIMEOUT,
        &apiserver_log,
        || port_open(controller_manager),
    )?;
    Ok(state)
}

fn port_open(port: u16) -> Result<(), String> {
    TcpStream::connect(("127.0.0.1", port))
        .map(drop)
        .map_err(|err| format!("127.0.0.1:{port}: {err}"))
}

fn record(started: &Started, bins: &Binaries) -> ProcessRecord {
    let binary = match started.name {
        "etcd" => bins.etcd(),
        "kube-apiserver" => bins.kube_apiserver(),
        _ => bins.kube_controller_manager(),
    };
    ProcessRecord {
        name: started.name.to_owned(),
        pid: started.child.id() as i32,
        binary,
        log: started.log.clone(),
    }
}

/// Spawns one process and records it in the state file at once, so `down` can find it even if
/// this call dies before the cluster is ready.
fn spawn(
    state_dir: &Path,
    bins: &Binaries,
    state: &mut State,
    started: &mut Vec<Started>,
    name: &'static str,
    binary: &Path,
    args: &[String],
) -> Result<(), Error> {
    let log = state_dir.join(format!("{name}.log"));
    let child = processes::spawn(name, binary, args, &log)?;
    started.push(Started { name, child, log });
    state
        .processes
        .push(record(started.last().expect("just pushed"), bins));
    state.save(state_dir)
}

/// Polls `check` until it passes, failing early with the log tail of any process that exited.
fn wait_until(
    state_dir: &Path,
    started: &mut [Started],
    what: &'static str,
    timeout: Duration,
    apiserver_log: &Path,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        for s in started.iter_mut() {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(Error::ProcessExited {
                    name: s.name,
                    status,
                    log: s.log.clone(),
                    tail: processes::log_tail(&s.log, TAIL_LINES),
                });
            }
        }
        let last = match check() {
            Ok(()) => return Ok(()),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(Error::NotReady {
                what,
                seconds: timeout.as_secs(),
                last,
                state_dir: state_dir.to_owned(),
                tail: processes::log_tail(apiserver_log, TAIL_LINES),
            });
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
