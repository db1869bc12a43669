use std::path::PathBuf;

use super::*;

/// A self-signed certificate for `name` and its key, as PEM.
fn pair(name: &str) -> (String, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap_or_else(|e| panic!("{e}"));
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("http-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        Self(dir)
    }
    fn write(&self, cert: &str, key: &str) {
        std::fs::write(self.0.join("tls.crt"), cert).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(self.0.join("tls.key"), key).unwrap_or_else(|e| panic!("{e}"));
    }
    fn load(&self) -> Result<Arc<HttpTls>, HttpTlsError> {
        HttpTls::load(&self.0.join("tls.crt"), &self.0.join("tls.key"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn served(tls: &HttpTls) -> Vec<u8> {
    tls.current.read().unwrap_or_else(|p| p.into_inner()).0[0].clone()
}

#[test]
fn a_missing_file_or_a_key_of_another_certificate_is_refused_naming_the_variable() {
    let dir = Dir::new("refused");
    let err = dir.load().map(|_| ()).unwrap_err();
    assert!(
        err.to_string().starts_with("TLS_CERT_FILE: cannot read"),
        "{err}"
    );
    let (cert, _) = pair("a.example");
    let (_, other_key) = pair("b.example");
    dir.write(&cert, &other_key);
    let err = dir.load().map(|_| ()).unwrap_err();
    assert!(
        matches!(err, HttpTlsError::Rustls(_)),
        "a mismatched key must be refused: {err}"
    );
    dir.write(&cert, "not a key");
    let err = dir.load().map(|_| ()).unwrap_err();
    assert!(err.to_string().starts_with("TLS_KEY_FILE: "), "{err}");
}

#[test]
fn reload_swaps_only_a_changed_pair_that_fits_and_keeps_the_last_good_one() {
    let dir = Dir::new("reload");
    let (cert_a, key_a) = pair("a.example");
    dir.write(&cert_a, &key_a);
    let tls = dir.load().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !tls.reload().unwrap_or_else(|e| panic!("{e}")),
        "nothing changed"
    );

    // Half-written: the new certificate beside the old key.
    let (cert_b, key_b) = pair("b.example");
    dir.write(&cert_b, &key_a);
    assert!(tls.reload().is_err());
    assert_eq!(served(&tls), cert_a.as_bytes(), "the last good pair stays");
    std::fs::remove_file(dir.0.join("tls.key")).unwrap_or_else(|e| panic!("{e}"));
    assert!(tls.reload().is_err());
    assert_eq!(served(&tls), cert_a.as_bytes());

    dir.write(&cert_b, &key_b);
    assert!(tls.reload().unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(served(&tls), cert_b.as_bytes());
}
