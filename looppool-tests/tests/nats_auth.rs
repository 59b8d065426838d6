//! The secure setup of the crate docs against a real `nats-server`: a user
//! per role (parent, worker) with the subjects `auth::Permissions` gives,
//! every way NATS authenticates, and what another user of the same broker
//! can and cannot do.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use looppool_nats::async_nats;
use looppool_nats::auth::{Permissions, Role};
use looppool_nats::{Credentials, NatsPoolBuilder};
use looppool_tests::nats::NatsServer;
use looppool_tests::{Job, Probe};

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");
const POOL: &str = "sec";
const PARENT_PASSWORD: &str = "parent-pw-Qx81";
const WORKER_PASSWORD: &str = "worker-pw-Zk27";
const OTHER_PASSWORD: &str = "other-pw-Lm55";

/// A user entry of the server's configuration.
fn user(login: &str, pool: &str, role: Role) -> String {
    let p = Permissions::for_role(pool, role).unwrap();
    format!("    {{ {login}, permissions: {} }}\n", p.to_server_config())
}

/// NKey pairs for the parent and worker roles of `POOL`: (seed, public).
struct NKeys {
    parent: (String, String),
    worker: (String, String),
}

impl NKeys {
    fn new() -> Self {
        let pair = || {
            let k = nkeys::KeyPair::new_user();
            (k.seed().unwrap(), k.public_key())
        };
        NKeys {
            parent: pair(),
            worker: pair(),
        }
    }
}

/// A server whose users are pool `sec`'s parent and worker (by password
/// and by NKey) and pool `other`'s parent and worker.
fn users_server(keys: &NKeys) -> Option<NatsServer> {
    NatsServer::start_with_config(|_| {
        let mut users = String::new();
        users += &user(
            &format!("user: sec-parent, password: {PARENT_PASSWORD}"),
            POOL,
            Role::Parent,
        );
        users += &user(
            &format!("user: sec-worker, password: {WORKER_PASSWORD}"),
            POOL,
            Role::Worker,
        );
        users += &user(&format!("nkey: {}", keys.parent.1), POOL, Role::Parent);
        users += &user(&format!("nkey: {}", keys.worker.1), POOL, Role::Worker);
        users += &user(
            &format!("user: other-parent, password: {OTHER_PASSWORD}"),
            "other",
            Role::Parent,
        );
        users += &user(
            &format!("user: other-worker, password: {OTHER_PASSWORD}"),
            "other",
            Role::Worker,
        );
        format!("authorization {{\n  users = [\n{users}  ]\n}}\n")
    })
}

/// Asserts that a client presenting `options` cannot connect.
async fn refused(url: &str, options: async_nats::ConnectOptions, what: &str) {
    let tried = tokio::time::timeout(Duration::from_secs(5), options.connect(url)).await;
    assert!(
        !matches!(tried, Ok(Ok(_))),
        "{what}: a client connected without valid credentials"
    );
}

/// The test worker as a remote worker of `POOL`, with `env` added.
fn remote(url: &str, env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(WORKER);
    cmd.env("LOOPPOOL_NATS_URL", url)
        .env("LOOPPOOL_NATS_POOL", POOL)
        .env("LOOPPOOL_NATS_WORKER", "probe")
        .env("LOOPPOOL_NATS_JOIN_TIMEOUT", "20")
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("the test worker")
}

/// Runs a pool of one local and one remote worker through `builder`,
/// with `remote` the remote worker, and checks that both serve calls and
/// the remote one exits 0.
async fn serve_calls(builder: NatsPoolBuilder<Probe>, mut remote: Child, what: &str) {
    let (pool, _outputs) = builder
        .program(WORKER)
        .init_default()
        .local_workers(1)
        .remote_workers(1)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{what}: the pool did not start: {e}"));
    for i in 0..20 {
        let answer = pool.call_to(i as usize % 2, Job::Double(i)).await;
        assert_eq!(answer.unwrap(), 2 * i, "{what}: worker {}", i % 2);
    }
    pool.shutdown().await;
    let status = tokio::task::spawn_blocking(move || remote.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "{what}: the remote worker exited {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_in_options_env_and_url() {
    let keys = NKeys::new();
    let Some(server) = users_server(&keys) else {
        return;
    };
    let builder = NatsPoolBuilder::<Probe>::new(&server.url, POOL)
        .credentials(Credentials::user_password("sec-parent", PARENT_PASSWORD))
        .worker_credentials(Credentials::user_password("sec-worker", WORKER_PASSWORD));
    let worker = remote(
        &server.url,
        &[
            ("LOOPPOOL_NATS_USER", "sec-worker".into()),
            ("LOOPPOOL_NATS_PASSWORD", WORKER_PASSWORD.into()),
        ],
    );
    refused(&server.url, Default::default(), "no password").await;
    serve_calls(builder, worker, "user and password").await;
    // The same, with the credentials in the URLs.
    let with = |u: &str, p: &str| {
        server
            .url
            .replacen("nats://", &format!("nats://{u}:{p}@"), 1)
    };
    let builder = NatsPoolBuilder::<Probe>::new(with("sec-parent", PARENT_PASSWORD), POOL)
        .worker_credentials(Credentials::user_password("sec-worker", WORKER_PASSWORD));
    let worker = remote(&with("sec-worker", WORKER_PASSWORD), &[]);
    serve_calls(builder, worker, "user and password in the URL").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nkeys_in_code_and_in_a_seed_file() {
    let keys = NKeys::new();
    let Some(server) = users_server(&keys) else {
        return;
    };
    let seed_file = server.dir().join("worker.nk");
    std::fs::write(&seed_file, &keys.worker.0).unwrap();
    let builder = NatsPoolBuilder::<Probe>::new(&server.url, POOL)
        .credentials(Credentials::nkey_seed(keys.parent.0.clone()))
        .worker_credentials(Credentials::nkey_file(&seed_file));
    let worker = remote(
        &server.url,
        &[("LOOPPOOL_NATS_NKEY", seed_file.display().to_string())],
    );
    let unknown = nkeys::KeyPair::new_user().seed().unwrap();
    let options = async_nats::ConnectOptions::with_nkey(unknown);
    refused(&server.url, options, "an unknown nkey").await;
    serve_calls(builder, worker, "nkeys").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_code_and_in_the_url() {
    let Some(server) =
        NatsServer::start_with_config(|_| "authorization { token: \"tok-Vb93\" }\n".into())
    else {
        return;
    };
    refused(&server.url, Default::default(), "no token").await;
    let options = async_nats::ConnectOptions::with_token("wrong".into());
    refused(&server.url, options, "a wrong token").await;
    // Local workers share the parent's token.
    let builder = NatsPoolBuilder::<Probe>::new(&server.url, POOL)
        .credentials(Credentials::token("tok-Vb93"));
    let url = server.url.replacen("nats://", "nats://tok-Vb93@", 1);
    serve_calls(builder, remote(&url, &[]), "token").await;
    let builder = NatsPoolBuilder::<Probe>::new(&url, POOL);
    let worker = remote(
        &server.url,
        &[("LOOPPOOL_NATS_AUTH_TOKEN", "tok-Vb93".into())],
    );
    serve_calls(builder, worker, "token in the URL").await;
}

/// A CA, and certificates it signed: the server's (for 127.0.0.1) and a
/// client's per name, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    dir: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(dir: &Path) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "looppool test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, cert.pem()).unwrap();
        Pki {
            ca,
            dir: dir.into(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// `(cert, key)` files for `name` (the subject's common name), valid
    /// for `sans`.
    fn issue(&self, name: &str, sans: Vec<String>) -> (PathBuf, PathBuf) {
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_certificates_name_the_users() {
    let mut pki = None;
    let Some(server) = NatsServer::start_with_config(|dir| {
        let p = Pki::new(dir);
        let (cert, key) = p.issue("server", vec!["127.0.0.1".into(), "localhost".into()]);
        let conf = format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify_and_map: true\n}}\n\
             authorization {{\n  users = [\n{}{}  ]\n}}\n",
            cert.display(),
            key.display(),
            p.ca.display(),
            user("user: \"CN=sec-parent\"", POOL, Role::Parent),
            user("user: \"CN=sec-worker\"", POOL, Role::Worker),
        );
        pki = Some(p);
        conf
    }) else {
        return;
    };
    let pki = pki.unwrap();
    let tls = |name: &str| {
        let (cert, key) = pki.issue(name, Vec::new());
        (
            Credentials::none()
                .root_certificates(&pki.ca)
                .client_certificate(&cert, &key),
            cert,
            key,
        )
    };
    let (parent, _, _) = tls("sec-parent");
    let (worker, cert, key) = tls("sec-worker");
    let builder = NatsPoolBuilder::<Probe>::new(&server.url, POOL)
        .credentials(parent)
        .worker_credentials(worker);
    let remote = remote(
        &server.url,
        &[
            ("LOOPPOOL_NATS_CA", pki.ca.display().to_string()),
            ("LOOPPOOL_NATS_CERT", cert.display().to_string()),
            ("LOOPPOOL_NATS_KEY", key.display().to_string()),
        ],
    );
    let options = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca.clone())
        .require_tls(true);
    refused(&server.url, options, "TLS without a client certificate").await;
    serve_calls(builder, remote, "TLS client certificates").await;
}

/// Whether the JetStream API refused `subject` to `client`: no answer
/// (the server dropped the request) or an error answer.
async fn api_refused(client: &async_nats::Client, subject: &str, payload: &'static str) -> bool {
    let asked = client.request(subject.to_owned(), payload.into());
    match tokio::time::timeout(Duration::from_millis(500), asked).await {
        Ok(Ok(answer)) => String::from_utf8_lossy(&answer.payload).contains("\"error\""),
        _ => true,
    }
}

/// Messages `client` receives on `subjects` (each may be refused).
async fn spy(client: &async_nats::Client, subjects: &[&str]) -> Vec<async_nats::Subscriber> {
    let mut subs = Vec::new();
    for s in subjects {
        subs.push(client.subscribe(s.to_string()).await.unwrap());
    }
    subs
}

fn heard(subs: &mut [async_nats::Subscriber]) -> usize {
    use futures_util::FutureExt;
    let mut n = 0;
    for s in subs {
        use futures_util::StreamExt;
        while let Some(Some(_)) = s.next().now_or_never() {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_users_cannot_read_forge_join_kill_or_delete() {
    let keys = NKeys::new();
    let Some(server) = users_server(&keys) else {
        return;
    };
    let login =
        |u: &str, p: &str| async_nats::ConnectOptions::with_user_and_password(u.into(), p.into());
    let other = login("other-parent", OTHER_PASSWORD)
        .connect(&server.url)
        .await
        .unwrap();
    let worker_role = login("sec-worker", WORKER_PASSWORD)
        .connect(&server.url)
        .await
        .unwrap();
    let parent_role = login("sec-parent", PARENT_PASSWORD)
        .custom_inbox_prefix("_INBOX_LP.sec.parent")
        .connect(&server.url)
        .await
        .unwrap();
    // Everything of the pool's, and everyone's replies.
    let mut other_subs = spy(&other, &[">", "lp.sec.>", "_INBOX.>", "_INBOX_LP.sec.>"]).await;
    let mut worker_subs = spy(
        &worker_role,
        &["lp.sec.out.*", "lp.sec.join", "_INBOX_LP.sec.parent.>"],
    )
    .await;
    let builder = NatsPoolBuilder::<Probe>::new(&server.url, POOL)
        .program(WORKER)
        .init(looppool_tests::ProbeInit::default())
        .credentials(Credentials::user_password("sec-parent", PARENT_PASSWORD))
        .worker_credentials(Credentials::user_password("sec-worker", WORKER_PASSWORD))
        .local_workers(1)
        .remote_workers(1);
    let drops = builder.drop_counts();
    let (events, hook) = looppool_tests::recorder();
    let starting = tokio::spawn(builder.configure(|b| b.on_event(hook)).start());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The remote place is open: another pool's parent asks for it.
    let join = other.request("lp.sec.join".to_owned(), "hello".into());
    let joined = tokio::time::timeout(Duration::from_secs(2), join).await;
    assert!(
        !matches!(joined, Ok(Ok(_))),
        "a stranger was answered a join"
    );
    let remote = remote(
        &server.url,
        &[
            ("LOOPPOOL_NATS_USER", "sec-worker".into()),
            ("LOOPPOOL_NATS_PASSWORD", WORKER_PASSWORD.into()),
        ],
    );
    let (pool, _outputs) = starting.await.unwrap().unwrap();
    let js = async_nats::jetstream::new(parent_role.clone());
    let last = |name: &'static str| {
        let js = js.clone();
        async move {
            js.get_stream(name)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .last_sequence
        }
    };
    let (tasks_before, outs_before) = (last("LP_sec_TASK").await, last("LP_sec_OUT").await);
    // Forged tasks, outputs, control messages (a kill), heartbeats.
    for client in [&other, &worker_role] {
        for subject in [
            "lp.sec.task.0",
            "lp.sec.task.1",
            "lp.sec.ctl.0",
            "lp.sec.ctl.1",
            "lp.sec.owner",
        ] {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Lp-Kill", "1");
            h.insert("Lp-Inc", "1");
            h.insert("Lp-Task", "2");
            client
                .publish_with_headers(subject.to_owned(), h, "forged".into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
    }
    other
        .publish("lp.sec.out.0".to_owned(), "forged".into())
        .await
        .unwrap();
    other
        .publish("lp.sec.hb.0".to_owned(), "forged".into())
        .await
        .unwrap();
    for i in 0..50 {
        assert_eq!(pool.call(Job::Double(i)).await.unwrap(), 2 * i);
    }
    // The JetStream API: read the streams, read a message, make a consumer
    // to read tasks or outputs, purge, delete.
    for stream in ["LP_sec_TASK", "LP_sec_OUT"] {
        let calls = [
            (format!("$JS.API.STREAM.INFO.{stream}"), ""),
            (format!("$JS.API.STREAM.MSG.GET.{stream}"), "{\"seq\":1}"),
            (format!("$JS.API.CONSUMER.NAMES.{stream}"), ""),
            (
                format!("$JS.API.CONSUMER.CREATE.{stream}.spy"),
                "{\"stream_name\":\"x\",\"config\":{\"durable_name\":\"spy\",\"ack_policy\":\"none\"}}",
            ),
            (format!("$JS.API.STREAM.PURGE.{stream}"), ""),
            (format!("$JS.API.STREAM.DELETE.{stream}"), ""),
        ];
        for (subject, payload) in &calls {
            assert!(
                api_refused(&other, subject, payload).await,
                "another pool's parent: {subject}"
            );
            assert!(
                api_refused(&worker_role, subject, payload).await,
                "the worker role: {subject}"
            );
        }
        // The check itself can tell: the pool's parent may ask.
        let info = format!("$JS.API.STREAM.INFO.{stream}");
        assert!(!api_refused(&parent_role, &info, "").await, "{info}");
    }
    assert_eq!(
        pool.call(Job::Double(7)).await.unwrap(),
        14,
        "the streams are still there"
    );
    assert_eq!(
        heard(&mut other_subs),
        0,
        "another pool's parent heard the pool"
    );
    assert_eq!(
        heard(&mut worker_subs),
        0,
        "the worker role heard outputs or the parent's replies"
    );
    // One message per call since: nothing forged was stored.
    assert_eq!(
        last("LP_sec_TASK").await,
        tasks_before + 51,
        "forged task messages were stored"
    );
    assert!(last("LP_sec_OUT").await > outs_before);
    assert_eq!(drops.total(), 0, "a forged message reached the pool");
    let crashed = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, looppool::WorkerEvent::Crashed { .. }))
        .count();
    assert_eq!(crashed, 0, "a worker was killed");
    pool.shutdown().await;
    let mut remote = remote;
    assert!(tokio::task::spawn_blocking(move || remote.wait())
        .await
        .unwrap()
        .unwrap()
        .success());
}

/// Everything logged while installed, at every level down to debug.
#[derive(Clone, Default)]
struct Log(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The error's message, its sources' and its `Debug` form.
fn everything_said(err: &dyn std::error::Error) -> String {
    let mut said = format!("{err} / {err:?}");
    let mut source = err.source();
    while let Some(s) = source {
        said.push_str(&format!(" / {s}"));
        source = s.source();
    }
    said
}

#[tokio::test]
async fn a_password_never_reaches_an_error_or_a_log() {
    let keys = NKeys::new();
    let Some(server) = users_server(&keys) else {
        return;
    };
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    const WRONG: &str = "wrong-pw-Hq63";
    let in_url = server
        .url
        .replacen("nats://", &format!("nats://sec-parent:{WRONG}@"), 1);
    let refused = [
        NatsPoolBuilder::<Probe>::new(&in_url, POOL),
        NatsPoolBuilder::<Probe>::new(&server.url, POOL)
            .credentials(Credentials::user_password("sec-parent", WRONG)),
    ];
    for builder in refused {
        let builder = builder.program(WORKER).init_default().local_workers(1);
        assert!(!format!("{builder:?}").contains(WRONG));
        let err = builder.start().await.unwrap_err();
        let said = everything_said(&err);
        assert!(said.contains("uthorization"), "{said}");
        assert!(!said.contains(WRONG), "{said}");
    }
    // A pool that starts, and remote workers with a wrong password.
    let builder = NatsPoolBuilder::<Probe>::new(&server.url, POOL)
        .credentials(Credentials::user_password("sec-parent", PARENT_PASSWORD))
        .worker_credentials(Credentials::user_password("sec-worker", WORKER_PASSWORD))
        .program(WORKER)
        .init_default()
        .local_workers(1);
    let (pool, _outputs) = builder.start().await.unwrap();
    assert_eq!(pool.call(Job::Double(4)).await.unwrap(), 8);
    let worker_url = server
        .url
        .replacen("nats://", &format!("nats://sec-worker:{WRONG}@"), 1);
    let short = ("LOOPPOOL_NATS_JOIN_TIMEOUT", "3".to_owned());
    let tries = [
        remote(&worker_url, std::slice::from_ref(&short)),
        remote(
            &server.url,
            &[
                short.clone(),
                ("LOOPPOOL_NATS_USER", "sec-worker".into()),
                ("LOOPPOOL_NATS_PASSWORD", WRONG.into()),
            ],
        ),
    ];
    for child in tries {
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains("uthorization"), "{stderr}");
        assert!(!stderr.contains(WRONG), "{stderr}");
    }
    pool.shutdown().await;
    let logged = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(logged.contains("uthorization"), "the refusals were logged");
    for secret in [WRONG, PARENT_PASSWORD, WORKER_PASSWORD] {
        assert!(!logged.contains(secret), "{logged}");
    }
}
