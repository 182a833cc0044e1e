#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The edge listener end to end through the real binary: TLS with SNI, the
//! contract over HTTP/1.1 and HTTP/2 (ALPN), certificate reload on SIGHUP,
//! https upstreams and client certificates as credentials.

mod common;

use common::{eventually, free_port, stack, Stack};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A certificate authority of the test.
struct Ca {
    cert: Certificate,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            cert,
            key,
        }
    }

    /// `(cert PEM, key PEM, cert DER)` for `names`, for servers or clients.
    fn issue(&self, names: &[&str], client: bool) -> (String, String, Vec<u8>) {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "tenantgate_e2e_tls_{}_{}",
        std::process::id(),
        tenantgate_core::secrets::random_token(8)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A stack with a TLS listener: the default certificate for `localhost` and
/// `127.0.0.1`, one more for `*.acme.example`, client certificates from `clients`.
struct Edge {
    s: Stack,
    tls_port: u16,
    ca: Ca,
    default_der: Vec<u8>,
    acme_der: Vec<u8>,
    clients: Ca,
    dir: PathBuf,
}

async fn edge(routes: Option<&str>, demo_extra: &str) -> Edge {
    let dir = temp_dir();
    let ca = Ca::new("tenantgate test server CA");
    let clients = Ca::new("tenantgate test client CA");
    let (cert, key, default_der) = ca.issue(&["localhost", "127.0.0.1"], false);
    let (acme_cert, acme_key, acme_der) = ca.issue(&["*.acme.example"], false);
    write(&dir, "server.pem", &cert);
    write(&dir, "server.key", &key);
    write(&dir, "acme.pem", &acme_cert);
    write(&dir, "acme.key", &acme_key);
    write(&dir, "clients.pem", &clients.pem);
    let tls_port = free_port();
    let d = dir.display();
    let mut b = stack()
        .dir(dir.clone())
        .demo_extra(demo_extra)
        .extra(&format!(
            r#"
[proxy.tls]
listen = "127.0.0.1:{tls_port}"
cert_file = "{d}/server.pem"
key_file = "{d}/server.key"
client_ca_file = "{d}/clients.pem"
[[proxy.tls.sni]]
server_names = ["*.acme.example"]
cert_file = "{d}/acme.pem"
key_file = "{d}/acme.key"
"#
        ));
    if let Some(r) = routes {
        b = b.routes(r);
    }
    let s = b.start().await;
    Edge {
        s,
        tls_port,
        ca,
        default_der,
        acme_der,
        clients,
        dir,
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    H1,
    H2,
}

impl Edge {
    fn base(&self) -> String {
        format!("https://localhost:{}", self.tls_port)
    }

    /// A client trusting the test CA, speaking `proto` (offered by ALPN).
    fn client(&self, proto: Proto) -> reqwest::Client {
        self.client_with(proto, None)
    }

    fn client_with(&self, proto: Proto, identity: Option<reqwest::Identity>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).unwrap())
            .tls_built_in_root_certs(false)
            .tls_info(true)
            .resolve(
                "api.acme.example",
                format!("127.0.0.1:{}", self.tls_port).parse().unwrap(),
            )
            .timeout(Duration::from_secs(10));
        b = match proto {
            Proto::H1 => b.http1_only(),
            Proto::H2 => b.http2_prior_knowledge(),
        };
        if let Some(id) = identity {
            b = b.identity(id);
        }
        b.build().unwrap()
    }

    /// `(status, headers, json, version, server certificate DER)`.
    async fn get(
        &self,
        c: &reqwest::Client,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (
        u16,
        reqwest::header::HeaderMap,
        Value,
        reqwest::Version,
        Vec<u8>,
    ) {
        let mut req = c.get(url);
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let r = req.send().await.unwrap();
        let cert = r
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        let (status, h, version) = (r.status().as_u16(), r.headers().clone(), r.version());
        let text = r.text().await.unwrap();
        (
            status,
            h,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            version,
            cert,
        )
    }
}

fn version_of(p: Proto) -> reqwest::Version {
    match p {
        Proto::H1 => reqwest::Version::HTTP_11,
        Proto::H2 => reqwest::Version::HTTP_2,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_holds_over_tls_for_http1_and_http2() {
    let e = edge(None, "require_assertion = true").await;
    let acme = e.s.tenant("acme", "pro").await;
    let (key, key_id) = e.s.key(&acme, "developer").await;
    let (ro, _) = e.s.key(&acme, "read_only").await;
    for proto in [Proto::H1, Proto::H2] {
        let c = e.client(proto);
        let base = e.base();
        // No credential: 401 JSON with WWW-Authenticate.
        let (st, h, v, version, cert) = e.get(&c, &format!("{base}/api/v1/whoami"), &[]).await;
        assert_eq!(version, version_of(proto));
        assert_eq!(st, 401, "{proto:?} {v}");
        assert_eq!(v["error"]["code"], "unauthorized", "{proto:?}");
        assert!(v["error"]["request_id"].is_string());
        assert!(h.contains_key("www-authenticate"), "{proto:?}");
        assert_eq!(cert, e.default_der, "the default certificate for localhost");
        // A key: scrubbed, injected, the assertion verified by the demo upstream.
        let (st, h, v, _, _) = e
            .get(
                &c,
                &format!("{base}/api/v1/whoami"),
                &[
                    ("x-api-key", &key),
                    ("x-tenant-id", "globex"),
                    ("x_tenant_role", "admin"),
                    ("x-forwarded-proto", "gopher"),
                ],
            )
            .await;
        assert_eq!(st, 200, "{proto:?} {v}");
        assert_eq!(v["tenant_id"], "acme");
        assert_eq!(v["role"], "developer");
        assert_eq!(v["auth_method"], "api_key");
        assert_eq!(v["api_key_id"], key_id.as_str());
        assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{v}");
        assert!(h.contains_key("ratelimit-limit") || h.contains_key("ratelimit"));
        // RBAC, routing and resource CRUD.
        let (st, _, v, _, _) = e
            .get(&c, &format!("{base}/nowhere"), &[("x-api-key", &key)])
            .await;
        assert_eq!((st, v["error"]["code"].as_str()), (404, Some("no_route")));
        let r = c
            .post(format!("{base}/api/v1/resources"))
            .header("x-api-key", &ro)
            .json(&json!({"name": "n", "data": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "{proto:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "forbidden");
        let r = c
            .post(format!("{base}/api/v1/resources"))
            .header("x-api-key", &key)
            .json(&json!({"name": format!("made over {proto:?}"), "data": {"a": 1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{proto:?}");
    }
    // Limits: a tenant whose bucket is empty gets 429 with Retry-After on both.
    let (st, v) =
        e.s.admin(
            "PUT",
            "/v1/tenants/acme/rate-limit",
            Some(json!({"max_requests": 2, "window_seconds": 3600})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for proto in [Proto::H1, Proto::H2] {
        let c = e.client(proto);
        let mut limited = None;
        for _ in 0..5 {
            let (st, h, v, _, _) = e
                .get(
                    &c,
                    &format!("{}/api/v1/whoami", e.base()),
                    &[("x-api-key", &key)],
                )
                .await;
            if st == 429 {
                limited = Some((h, v));
                break;
            }
        }
        let (h, v) = limited.unwrap_or_else(|| panic!("{proto:?}: never limited"));
        assert_eq!(v["error"]["code"], "rate_limited");
        assert!(h.contains_key("retry-after"));
    }
    // Metering counts the TLS requests like the others.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let (_, v) = e.s.admin("GET", "/v1/tenants/acme/usage", None).await;
            v["totals"]["requests"].as_i64().unwrap_or(0) >= 8
        })
        .await
        .is_some(),
        "usage not metered"
    );
    // The plaintext listener stays.
    let (st, _) = e.s.with_key("GET", "/api/v1/whoami", &key).await;
    assert!(st == 200 || st == 429, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_certificate_with_wildcards() {
    let e = edge(None, "").await;
    let c = e.client(Proto::H1);
    let (_, _, _, _, cert) = e
        .get(
            &c,
            &format!("https://api.acme.example:{}/health", e.tls_port),
            &[],
        )
        .await;
    assert_eq!(cert, e.acme_der, "*.acme.example serves api.acme.example");
    let (_, _, _, _, cert) = e.get(&c, &format!("{}/health", e.base()), &[]).await;
    assert_eq!(cert, e.default_der);
    // TLS 1.2 is offered too.
    let c12 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(e.ca.pem.as_bytes()).unwrap())
        .max_tls_version(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    let r = c12
        .get(format!("{}/nowhere", e.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

fn hup(s: &Stack) {
    let pid = s.child.as_ref().unwrap().id().to_string();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_keeping_open_connections() {
    let e = edge(None, "").await;
    let url = format!("{}/nowhere", e.base());
    for proto in [Proto::H1, Proto::H2] {
        let (st, _, _, _, cert) = e.get(&e.client(proto), &url, &[]).await;
        assert_eq!((st, cert == e.default_der), (404, true));
    }
    // Open connections (one per protocol) made with the old certificate.
    let open: Vec<_> = [Proto::H1, Proto::H2]
        .into_iter()
        .map(|p| e.client(p))
        .collect();
    for c in &open {
        let (st, _, _, _, cert) = e.get(c, &url, &[]).await;
        assert_eq!((st, cert == e.default_der), (404, true));
    }
    let (cert, key, new_der) = e.ca.issue(&["localhost", "127.0.0.1"], false);
    write(&e.dir, "server.pem", &cert);
    write(&e.dir, "server.key", &key);
    hup(&e.s);
    let fresh = || async { e.get(&e.client(Proto::H1), &url, &[]).await.4 };
    assert!(
        eventually(Duration::from_secs(5), || async {
            fresh().await == new_der
        })
        .await
        .is_some(),
        "new handshakes see the new certificate; log:\n{}",
        e.s.log()
    );
    // The open connections were not dropped: same connection, old certificate.
    for c in &open {
        let (st, _, _, _, cert) = e.get(c, &url, &[]).await;
        assert_eq!(st, 404);
        assert_eq!(cert, e.default_der, "still the connection made before");
    }
    // A broken file: the last good certificate stays, one error line names it.
    write(
        &e.dir,
        "server.pem",
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    );
    hup(&e.s);
    let named = eventually(Duration::from_secs(5), || async {
        e.s.log().contains("server.pem")
    })
    .await;
    assert!(named.is_some(), "log:\n{}", e.s.log());
    let errors: Vec<_> =
        e.s.log()
            .lines()
            .filter(|l| l.contains("server.pem"))
            .map(str::to_owned)
            .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("ERROR"), "{errors:?}");
    assert_eq!(fresh().await, new_der);
    for proto in [Proto::H1, Proto::H2] {
        let (st, _, _, _, cert) = e.get(&e.client(proto), &url, &[]).await;
        assert_eq!((st, cert == new_der), (404, true));
    }
}

/// A one-answer HTTPS server: every request gets `200 upstream-ok`.
async fn tls_upstream(cert_pem: &str, key_pem: &str) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = tls.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let body = b"upstream-ok";
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        );
                        if tls.write_all(head.as_bytes()).await.is_err()
                            || tls.write_all(body).await.is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified() {
    let dir = temp_dir();
    let ca = Ca::new("upstream CA");
    let (cert, key, _) = ca.issue(&["127.0.0.1"], false);
    write(&dir, "upstream-ca.pem", &ca.pem);
    let port = tls_upstream(&cert, &key).await;
    let other = Ca::new("someone else");
    write(&dir, "other-ca.pem", &other.pem);
    let d = dir.display();
    let s = stack()
        .dir(dir.clone())
        .routes(&format!(
            r#"
[[routes]]
prefix = "/secure/"
upstream = "https://127.0.0.1:{port}"
ca_file = "{d}/upstream-ca.pem"
public = true
[[routes]]
prefix = "/wrong-ca/"
upstream = "https://127.0.0.1:{port}"
ca_file = "{d}/other-ca.pem"
public = true
[[routes]]
prefix = "/system-roots/"
upstream = "https://127.0.0.1:{port}"
public = true
"#
        ))
        .start()
        .await;
    let r = s
        .http
        .get(format!("{}/secure/x", s.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), "upstream-ok");
    for path in ["/wrong-ca/x", "/system-roots/x"] {
        let (st, _, v) = s.call("GET", path, &[], None).await;
        assert_eq!(st, 502, "{path}: {v}");
        assert_eq!(v["error"]["code"], "upstream_unavailable", "{path}");
    }
}

fn identity(cert: &str, key: &str) -> reqwest::Identity {
    reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_credentials() {
    let e = edge(None, "").await;
    let acme = e.s.tenant("acme", "pro").await;
    e.s.tenant("globex", "pro").await;
    let (cert, key, der) = e.clients.issue(&["robot.acme.example"], true);
    let (other_cert, other_key, _) = e.clients.issue(&["stranger.example"], true);
    let path = format!("/v1/tenants/{acme}/client-certs");

    // Bad input: malformed PEM 422, unknown role 422.
    let (st, v) =
        e.s.admin(
            "POST",
            &path,
            Some(json!({"name": "robot", "role": "developer", "certificate": "not a pem"})),
        )
        .await;
    assert_eq!(st, 422, "{v}");
    assert_eq!(v["error"]["code"], "validation_error", "{v}");
    let (st, _) =
        e.s.admin(
            "POST",
            &path,
            Some(json!({"name": "robot", "role": "no-such-role", "certificate": cert})),
        )
        .await;
    assert_eq!(st, 422);

    let (st, created) =
        e.s.admin(
            "POST",
            &path,
            Some(json!({"name": "robot", "role": "developer", "certificate": cert})),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    assert_eq!(
        created["fingerprint_sha256"],
        hex::encode(Sha256::digest(&der))
    );
    assert_eq!(created["role"], "developer");
    let id = created["id"].as_str().unwrap().to_owned();
    // One tenant per certificate.
    let (st, v) =
        e.s.admin(
            "POST",
            "/v1/tenants/globex/client-certs",
            Some(json!({"name": "dup", "role": "developer", "certificate": cert})),
        )
        .await;
    assert_eq!(st, 409, "{v}");
    let (st, list) = e.s.admin("GET", &path, None).await;
    assert_eq!((st, list.as_array().unwrap().len()), (200, 1));
    let (st, one) = e.s.admin("GET", &format!("{path}/{id}"), None).await;
    assert_eq!((st, one["id"].as_str()), (200, Some(id.as_str())));
    let (st, _) =
        e.s.admin(
            "GET",
            &format!("/v1/tenants/globex/client-certs/{id}"),
            None,
        )
        .await;
    assert_eq!(st, 404, "another tenant's certificate is not found");

    let url = format!("{}/api/v1/whoami", e.base());
    for proto in [Proto::H1, Proto::H2] {
        let robot = e.client_with(proto, Some(identity(&cert, &key)));
        let (st, _, v, version, _) = e.get(&robot, &url, &[("x-tenant-id", "globex")]).await;
        assert_eq!(version, version_of(proto));
        assert_eq!(st, 200, "{proto:?} {v}");
        assert_eq!(v["tenant_id"], "acme");
        assert_eq!(v["role"], "developer");
        assert_eq!(v["auth_method"], "mtls");
        assert_eq!(v["user_id"], id.as_str());
        // An unregistered certificate and no other credential: 401 unauthorized.
        let stranger = e.client_with(proto, Some(identity(&other_cert, &other_key)));
        let (st, _, v, _, _) = e.get(&stranger, &url, &[]).await;
        assert_eq!(
            (st, v["error"]["code"].as_str()),
            (401, Some("unauthorized"))
        );
        // Another credential still works on such a connection.
        let (k, _) = e.s.key("globex", "developer").await;
        let (st, _, v, _, _) = e.get(&stranger, &url, &[("x-api-key", &k)]).await;
        assert_eq!((st, v["tenant_id"].as_str()), (200, Some("globex")));
    }

    // Deleted: refused within a second, on a connection opened before.
    let robot = e.client_with(Proto::H2, Some(identity(&cert, &key)));
    assert_eq!(e.get(&robot, &url, &[]).await.0, 200);
    let (st, _) = e.s.admin("DELETE", &format!("{path}/{id}"), None).await;
    assert_eq!(st, 204);
    let took = eventually(Duration::from_secs(1), || async {
        e.get(&robot, &url, &[]).await.0 == 401
    })
    .await;
    assert!(
        took.is_some(),
        "a deleted certificate is refused within 1 s"
    );
    let (st, _) = e.s.admin("DELETE", &format!("{path}/{id}"), None).await;
    assert_eq!(st, 404);
}
