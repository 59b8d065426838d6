//! Credentials files against a `nats-server` in operator mode: an operator,
//! an account with JetStream, and a user per role whose JWT carries the
//! permissions `auth::Permissions::for_role` gives, all made by the test
//! with NKeys. The parent, its local worker and a remote worker log in with
//! their credentials files and serve calls; a user signed by an account the
//! operator does not know cannot log in; the worker's user cannot delete
//! the pool's streams.
//!
//! The JWTs are encoded here (a header, the claims and an Ed25519
//! signature by the issuer's NKey, each base64url): the Rust crates for
//! NATS JWTs either do not make operator JWTs or are still unfinished, and
//! the format is small.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use looppool_nats::async_nats;
use looppool_nats::auth::{Permissions, Role};
use looppool_nats::{Credentials, NatsPoolBuilder};
use looppool_tests::nats::NatsServer;
use looppool_tests::{Job, Probe};
use nkeys::KeyPair;
use serde_json::{json, Value};

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");
const POOL: &str = "jwt";

/// Base64url without padding, as JWTs use it.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A JWT naming `subject`, issued and signed by `issuer`, with `nats` as
/// its NATS claims.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let issued = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": format!("{name}-{subject}"),
        "iat": issued,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        base64url(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        base64url(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", base64url(&signature))
}

/// An account's claims: no limits, and JetStream when `jetstream`.
fn account(jetstream: bool) -> Value {
    let mut limits = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for key in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[key] = json!(-1);
        }
    }
    json!({ "type": "account", "version": 2, "limits": limits })
}

/// A user's claims: the subjects of `role` in pool `POOL`.
fn user(role: Role) -> Value {
    let p = Permissions::for_role(POOL, role).unwrap();
    let mut claims = json!({
        "type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1,
        "pub": { "allow": p.publish() },
        "sub": { "allow": p.subscribe() },
    });
    if p.allow_responses() {
        claims["resp"] = json!({ "max": 1, "ttl": 0 });
    }
    claims
}

/// Writes a credentials file for `user` (its JWT and seed) in `dir`.
fn creds(dir: &Path, name: &str, jwt: &str, user: &KeyPair) -> PathBuf {
    let path = dir.join(format!("{name}.creds"));
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The broker's users: the pool's parent and worker, in an account with
/// JetStream, under an operator (and its system account).
struct Trust {
    operator: KeyPair,
    system: KeyPair,
    account: KeyPair,
    parent: KeyPair,
    worker: KeyPair,
}

impl Trust {
    fn new() -> Self {
        Trust {
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
            account: KeyPair::new_account(),
            parent: KeyPair::new_user(),
            worker: KeyPair::new_user(),
        }
    }

    /// The server's configuration: the operator and the two accounts,
    /// preloaded in a memory resolver.
    fn server_config(&self) -> String {
        let operator = jwt(
            &self.operator,
            &self.operator.public_key(),
            "looppool-tests",
            json!({ "type": "operator", "version": 2, "system_account": self.system.public_key() }),
        );
        let system = jwt(
            &self.operator,
            &self.system.public_key(),
            "SYS",
            account(false),
        );
        let pool = jwt(
            &self.operator,
            &self.account.public_key(),
            POOL,
            account(true),
        );
        format!(
            "operator: \"{operator}\"\nsystem_account: {}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {}: \"{system}\"\n  {}: \"{pool}\"\n}}\n",
            self.system.public_key(),
            self.system.public_key(),
            self.account.public_key(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_files_log_in_to_an_operator_mode_broker() {
    let trust = Trust::new();
    let Some(server) = NatsServer::start_with_config(|_| trust.server_config()) else {
        return;
    };
    let dir = server.dir();
    let parent_jwt = jwt(
        &trust.account,
        &trust.parent.public_key(),
        "parent",
        user(Role::Parent),
    );
    let worker_jwt = jwt(
        &trust.account,
        &trust.worker.public_key(),
        "worker",
        user(Role::Worker),
    );
    let parent = creds(dir, "parent", &parent_jwt, &trust.parent);
    let worker = creds(dir, "worker", &worker_jwt, &trust.worker);

    // A user whose account the operator never signed is refused.
    let (stranger_account, stranger) = (KeyPair::new_account(), KeyPair::new_user());
    let forged = jwt(
        &stranger_account,
        &stranger.public_key(),
        "stranger",
        user(Role::Parent),
    );
    let forged = creds(dir, "stranger", &forged, &stranger);
    let options = async_nats::ConnectOptions::with_credentials_file(forged)
        .await
        .unwrap();
    let tried = tokio::time::timeout(Duration::from_secs(5), options.connect(&server.url)).await;
    assert!(
        !matches!(tried, Ok(Ok(_))),
        "a user of an unknown account connected"
    );

    let mut remote = Command::new(WORKER)
        .env("LOOPPOOL_NATS_URL", &server.url)
        .env("LOOPPOOL_NATS_POOL", POOL)
        .env("LOOPPOOL_NATS_WORKER", "probe")
        .env("LOOPPOOL_NATS_JOIN_TIMEOUT", "20")
        .env(looppool_nats::CREDS_ENV, &worker)
        .stdin(Stdio::null())
        .spawn()
        .expect("the test worker");
    let (pool, _outputs) = NatsPoolBuilder::<Probe>::new(&server.url, POOL)
        .credentials(Credentials::credentials_file(&parent))
        .worker_credentials(Credentials::credentials_file(&worker))
        .program(WORKER)
        .init_default()
        .local_workers(1)
        .remote_workers(1)
        .start()
        .await
        .expect("the pool starts with credentials files");
    for i in 0..20u64 {
        let answer = pool.call_to(i as usize % 2, Job::Double(i)).await;
        assert_eq!(answer.unwrap(), 2 * i, "worker {}", i % 2);
    }

    // The worker's user may pull tasks, not delete the pool's streams.
    let as_worker = async_nats::ConnectOptions::with_credentials_file(worker.clone())
        .await
        .unwrap()
        .connect(&server.url)
        .await
        .expect("the worker's user logs in");
    let deleted = async_nats::jetstream::new(as_worker)
        .delete_stream(format!("LP_{POOL}_TASK"))
        .await;
    assert!(
        deleted.is_err(),
        "the worker's user deleted the task stream"
    );
    assert_eq!(pool.call(Job::Double(21)).await.unwrap(), 42);

    pool.shutdown().await;
    let status = tokio::task::spawn_blocking(move || remote.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "the remote worker exited {status}");
}
