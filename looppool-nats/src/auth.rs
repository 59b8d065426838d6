//! Who a pool's processes are to the broker: their credentials, and the
//! subjects each role needs, to give it those and no others.
//!
//! See the crate documentation's *Security* section for the threat model and
//! a complete `nats-server` configuration.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::names::Names;

/// Environment variable (optional): a NATS credentials file.
pub const CREDS_ENV: &str = "LOOPPOOL_NATS_CREDS";
/// Environment variable (optional): a PEM file of root certificates to
/// trust, which also requires TLS.
pub const CA_ENV: &str = "LOOPPOOL_NATS_CA";
/// Environment variables (optional): a client certificate and key (PEM) for
/// TLS client authentication.
pub const CERT_ENV: &str = "LOOPPOOL_NATS_CERT";
/// See [`CERT_ENV`].
pub const KEY_ENV: &str = "LOOPPOOL_NATS_KEY";
/// Environment variable (optional): the user name to authenticate with,
/// beside [`PASSWORD_ENV`].
pub const USER_ENV: &str = "LOOPPOOL_NATS_USER";
/// Environment variable (optional): the password of [`USER_ENV`].
pub const PASSWORD_ENV: &str = "LOOPPOOL_NATS_PASSWORD";
/// Environment variable (optional): a token to authenticate with.
pub const AUTH_TOKEN_ENV: &str = "LOOPPOOL_NATS_AUTH_TOKEN";
/// Environment variable (optional): a file holding an NKey seed (`SU...`)
/// to authenticate with.
pub const NKEY_ENV: &str = "LOOPPOOL_NATS_NKEY";
/// Environment variable (optional): an NKey seed itself, as a pool passes
/// it to the local workers it starts (prefer [`NKEY_ENV`] by hand).
pub const NKEY_SEED_ENV: &str = "LOOPPOOL_NATS_NKEY_SEED";

/// A role in a pool: what its processes may do on the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The process that starts the pool: creates its streams and consumers,
    /// sends tasks, reads outputs, answers joins.
    Parent,
    /// A worker process, local or remote: takes its tasks, sends outputs,
    /// heartbeats and join requests.
    Worker,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Parent => "parent",
            Role::Worker => "worker",
        }
    }
}

/// The prefix of the reply subjects of `role`'s connections in a pool,
/// so that permissions can give each role its own replies and no one
/// else's (the client's default, `_INBOX`, is shared by every client).
pub(crate) fn inbox_prefix(names: &Names, role: Role) -> String {
    format!("_INBOX_LP.{}.{}", names.pool(), role.name())
}

/// The subjects one role of one pool needs, and no others: what a
/// `nats-server` user for that role should be allowed.
///
/// # Examples
///
/// ```
/// use looppool_nats::auth::{Permissions, Role};
///
/// let worker = Permissions::for_role("jobs", Role::Worker).unwrap();
/// assert!(worker.publish().iter().any(|s| s == "lp.jobs.out.*"));
/// assert!(!worker.publish().iter().any(|s| s.starts_with("lp.jobs.task")));
/// // The `permissions` block of a user in the server's configuration:
/// let block = worker.to_server_config();
/// assert!(block.starts_with("{ publish: ["));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    publish: Vec<String>,
    subscribe: Vec<String>,
    allow_responses: bool,
}

impl Permissions {
    /// What `role` needs in pool `pool`.
    ///
    /// # Errors
    /// When `pool` cannot name broker subjects.
    pub fn for_role(pool: &str, role: Role) -> Result<Self, String> {
        let names = Names::new(pool)?;
        let p = names.pool();
        let (task, out) = (names.task_stream(), names.output_stream());
        let inbox = format!("{}.>", inbox_prefix(&names, role));
        let (publish, subscribe) = match role {
            Role::Parent => (
                vec![
                    format!("lp.{p}.task.*"),
                    format!("lp.{p}.ctl.*"),
                    format!("lp.{p}.owner"),
                    // Creating, checking, purging and restoring the streams.
                    format!("$JS.API.STREAM.CREATE.{task}"),
                    format!("$JS.API.STREAM.CREATE.{out}"),
                    format!("$JS.API.STREAM.UPDATE.{task}"),
                    format!("$JS.API.STREAM.UPDATE.{out}"),
                    format!("$JS.API.STREAM.INFO.{task}"),
                    format!("$JS.API.STREAM.INFO.{out}"),
                    format!("$JS.API.STREAM.PURGE.{task}"),
                    format!("$JS.API.STREAM.PURGE.{out}"),
                    // Whether a task message is still stored.
                    format!("$JS.API.STREAM.MSG.GET.{task}"),
                    // Each incarnation's consumers.
                    format!("$JS.API.CONSUMER.CREATE.{task}.>"),
                    format!("$JS.API.CONSUMER.CREATE.{out}.>"),
                    format!("$JS.API.CONSUMER.DELETE.{task}.*"),
                    format!("$JS.API.CONSUMER.DELETE.{out}.*"),
                    format!("$JS.API.CONSUMER.NAMES.{task}"),
                    format!("$JS.API.CONSUMER.NAMES.{out}"),
                    // Pulling and acknowledging outputs.
                    format!("$JS.API.CONSUMER.INFO.{out}.*"),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{out}.*"),
                    format!("$JS.ACK.{out}.>"),
                ],
                vec![format!("lp.{p}.hb.*"), format!("lp.{p}.join"), inbox],
            ),
            Role::Worker => (
                vec![
                    format!("lp.{p}.out.*"),
                    format!("lp.{p}.hb.*"),
                    format!("lp.{p}.join"),
                    format!("$JS.API.CONSUMER.INFO.{task}.*"),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{task}.*"),
                    format!("$JS.ACK.{task}.>"),
                ],
                vec![format!("lp.{p}.ctl.*"), format!("lp.{p}.owner"), inbox],
            ),
        };
        Ok(Permissions {
            publish,
            subscribe,
            // The parent answers each join request once, on the worker's
            // own reply subject.
            allow_responses: role == Role::Parent,
        })
    }

    /// Subjects the role publishes to.
    pub fn publish(&self) -> &[String] {
        &self.publish
    }

    /// Subjects the role subscribes to.
    pub fn subscribe(&self) -> &[String] {
        &self.subscribe
    }

    /// Whether the role answers requests (the parent answers joins), which
    /// `nats-server` calls `allow_responses`.
    pub fn allow_responses(&self) -> bool {
        self.allow_responses
    }

    /// The value of a user's `permissions` in a `nats-server`
    /// configuration file: `{ publish: [...], subscribe: [...] }`, with
    /// `allow_responses: true` for the parent.
    pub fn to_server_config(&self) -> String {
        let list = |subjects: &[String]| {
            subjects
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut s = format!(
            "{{ publish: [{}], subscribe: [{}]",
            list(&self.publish),
            list(&self.subscribe)
        );
        if self.allow_responses {
            s.push_str(", allow_responses: true");
        }
        s.push_str(" }");
        s
    }
}

/// How a process proves who it is to the broker, in a form a pool can also
/// hand to the local worker processes it starts (through their
/// environment). Every way NATS authenticates: user and password, token,
/// NKey, credentials file (JWT), and TLS with a client certificate, which
/// combines with any of the others.
///
/// Its `Debug` output never shows a secret.
///
/// # Examples
///
/// ```
/// use looppool_nats::auth::Credentials;
///
/// let parent = Credentials::user_password("jobs-parent", "s3cret")
///     .root_certificates("/etc/nats/ca.pem")
///     .client_certificate("/etc/nats/parent.pem", "/etc/nats/parent-key.pem");
/// assert!(!format!("{parent:?}").contains("s3cret"));
/// ```
#[derive(Clone, Default)]
pub struct Credentials {
    secret: Secret,
    ca: Option<PathBuf>,
    cert: Option<(PathBuf, PathBuf)>,
}

#[derive(Clone, Default)]
enum Secret {
    #[default]
    None,
    UserPassword(String, String),
    Token(String),
    NKeySeed(String),
    NKeyFile(PathBuf),
    CredsFile(PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = match &self.secret {
            Secret::None => "none".to_owned(),
            Secret::UserPassword(user, _) => format!("user {user:?} with a password"),
            Secret::Token(_) => "a token".to_owned(),
            Secret::NKeySeed(_) => "an NKey seed".to_owned(),
            Secret::NKeyFile(p) => format!("the NKey seed in {}", p.display()),
            Secret::CredsFile(p) => format!("credentials file {}", p.display()),
        };
        f.debug_struct("Credentials")
            .field("secret", &secret)
            .field("ca", &self.ca)
            .field("cert", &self.cert)
            .finish()
    }
}

impl Credentials {
    /// No secret (TLS settings may still be added).
    pub fn none() -> Self {
        Credentials::default()
    }

    /// A user name and password.
    pub fn user_password(user: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            secret: Secret::UserPassword(user.into(), password.into()),
            ..Default::default()
        }
    }

    /// A token.
    pub fn token(token: impl Into<String>) -> Self {
        Credentials {
            secret: Secret::Token(token.into()),
            ..Default::default()
        }
    }

    /// An NKey seed (`SU...`); the server knows the user by its public key.
    pub fn nkey_seed(seed: impl Into<String>) -> Self {
        Credentials {
            secret: Secret::NKeySeed(seed.into()),
            ..Default::default()
        }
    }

    /// A file holding an NKey seed, read when connecting.
    pub fn nkey_file(path: impl Into<PathBuf>) -> Self {
        Credentials {
            secret: Secret::NKeyFile(path.into()),
            ..Default::default()
        }
    }

    /// A NATS credentials file (a user JWT and its NKey seed), read when
    /// connecting.
    pub fn credentials_file(path: impl Into<PathBuf>) -> Self {
        Credentials {
            secret: Secret::CredsFile(path.into()),
            ..Default::default()
        }
    }

    /// Trust the server certificates signed by the roots in this PEM file,
    /// and require TLS.
    pub fn root_certificates(mut self, ca: impl Into<PathBuf>) -> Self {
        self.ca = Some(ca.into());
        self
    }

    /// Present this client certificate and key (PEM files) to the server,
    /// which may know the user by it (`verify_and_map`).
    pub fn client_certificate(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.cert = Some((cert.into(), key.into()));
        self
    }

    /// These credentials, with `fallback`'s secret (credentials from the
    /// URL) when they have none of their own.
    pub(crate) fn or_secret(mut self, fallback: Option<Credentials>) -> Self {
        if let (Secret::None, Some(f)) = (&self.secret, fallback) {
            self.secret = f.secret;
        }
        self
    }

    /// Whether there is nothing to present.
    pub fn is_none(&self) -> bool {
        matches!(self.secret, Secret::None) && self.ca.is_none() && self.cert.is_none()
    }

    /// The credentials in this process's environment: [`USER_ENV`] and
    /// [`PASSWORD_ENV`], [`AUTH_TOKEN_ENV`], [`NKEY_ENV`] or
    /// [`NKEY_SEED_ENV`], [`CREDS_ENV`], then
    /// [`CA_ENV`], [`CERT_ENV`] and
    /// [`KEY_ENV`].
    ///
    /// # Errors
    /// When more than one secret is set, or a user without a password.
    pub fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let text = |k: &str| {
            var(k)
                .map(|v| v.into_string().map_err(|_| format!("{k} is not UTF-8")))
                .transpose()
        };
        let mut found = Vec::new();
        if let Some(user) = text(USER_ENV)? {
            let password = text(PASSWORD_ENV)?
                .ok_or_else(|| format!("{USER_ENV} is set but {PASSWORD_ENV} is not"))?;
            found.push(Secret::UserPassword(user, password));
        }
        if let Some(t) = text(AUTH_TOKEN_ENV)? {
            found.push(Secret::Token(t));
        }
        if let Some(seed) = text(NKEY_SEED_ENV)? {
            found.push(Secret::NKeySeed(seed));
        }
        if let Some(path) = var(NKEY_ENV) {
            found.push(Secret::NKeyFile(path.into()));
        }
        if let Some(path) = var(CREDS_ENV) {
            found.push(Secret::CredsFile(path.into()));
        }
        if found.len() > 1 {
            return Err(format!(
                "more than one of {USER_ENV}, {AUTH_TOKEN_ENV}, {NKEY_ENV}, {NKEY_SEED_ENV} and {} is set",
                CREDS_ENV
            ));
        }
        Ok(Credentials {
            secret: found.pop().unwrap_or_default(),
            ca: var(CA_ENV).map(Into::into),
            cert: var(CERT_ENV)
                .map(PathBuf::from)
                .zip(var(KEY_ENV).map(PathBuf::from)),
        })
    }

    /// The environment variables that give a worker process these
    /// credentials (read back by [`from_env`](Self::from_env)).
    pub(crate) fn to_env(&self) -> Vec<(&'static str, OsString)> {
        let mut env = Vec::new();
        match &self.secret {
            Secret::None => {}
            Secret::UserPassword(u, p) => {
                env.push((USER_ENV, u.into()));
                env.push((PASSWORD_ENV, p.into()));
            }
            Secret::Token(t) => env.push((AUTH_TOKEN_ENV, t.into())),
            Secret::NKeySeed(s) => env.push((NKEY_SEED_ENV, s.into())),
            Secret::NKeyFile(p) => env.push((NKEY_ENV, p.into())),
            Secret::CredsFile(p) => env.push((CREDS_ENV, p.into())),
        }
        if let Some(ca) = &self.ca {
            env.push((CA_ENV, ca.into()));
        }
        if let Some((cert, key)) = &self.cert {
            env.push((CERT_ENV, cert.into()));
            env.push((KEY_ENV, key.into()));
        }
        env
    }

    /// Every variable [`to_env`](Self::to_env) may set: a worker process
    /// gets none of them from its parent's own environment.
    pub(crate) const ENV: [&'static str; 9] = [
        USER_ENV,
        PASSWORD_ENV,
        AUTH_TOKEN_ENV,
        NKEY_ENV,
        NKEY_SEED_ENV,
        CREDS_ENV,
        CA_ENV,
        CERT_ENV,
        KEY_ENV,
    ];

    /// `options` with these credentials.
    ///
    /// # Errors
    /// When a file cannot be read (the message names the file, never a
    /// secret).
    pub(crate) async fn apply(
        &self,
        mut o: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, String> {
        o = match &self.secret {
            Secret::None => o,
            Secret::UserPassword(u, p) => o.user_and_password(u.clone(), p.clone()),
            Secret::Token(t) => o.token(t.clone()),
            Secret::NKeySeed(s) => o.nkey(s.clone()),
            Secret::NKeyFile(path) => {
                let seed = std::fs::read_to_string(path).map_err(|e| {
                    format!("cannot read the NKey seed file {}: {e}", path.display())
                })?;
                o.nkey(seed.trim().to_owned())
            }
            Secret::CredsFile(path) => o
                .credentials_file(path)
                .await
                .map_err(|e| format!("cannot read the credentials file {}: {e}", path.display()))?,
        };
        if let Some(ca) = &self.ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let Some((cert, key)) = &self.cert {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        Ok(o)
    }
}

/// `url` without the credentials before an `@` (see
/// [`public_url`](crate::broker::public_url)), and those credentials:
/// `user:password` or a token. The client does not read them from the
/// URL itself, so the pool does.
pub(crate) fn split_url(url: &str) -> (String, Option<Credentials>) {
    let mut found = None;
    for one in url.split(',') {
        let rest = one.find("://").map_or(one, |i| &one[i + 3..]);
        let host = &rest[..rest.find('/').unwrap_or(rest.len())];
        if let Some(at) = host.rfind('@') {
            let info = &host[..at];
            found.get_or_insert_with(|| match info.split_once(':') {
                Some((user, password)) => {
                    Credentials::user_password(decode(user), decode(password))
                }
                None => Credentials::token(decode(info)),
            });
        }
    }
    (crate::broker::public_url(url), found)
}

/// Percent-decoding, for URL credentials with reserved characters.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_credentials_are_taken_out_of_the_url() {
        let (url, c) = split_url("nats://u:p%40ss@h:4222");
        assert_eq!(url, "nats://h:4222");
        assert!(matches!(c.unwrap().secret, Secret::UserPassword(u, p) if u == "u" && p == "p@ss"));
        let (url, c) = split_url("tok@h:1,nats://h2:2");
        assert_eq!(url, "h:1,nats://h2:2");
        assert!(matches!(c.unwrap().secret, Secret::Token(t) if t == "tok"));
        assert!(split_url("nats://h:4222").1.is_none());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        for c in [
            Credentials::user_password("u", "hunter2"),
            Credentials::token("hunter2"),
            Credentials::nkey_seed("hunter2"),
        ] {
            assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
        }
    }

    #[test]
    fn roles_get_disjoint_writes_and_their_own_replies() {
        let parent = Permissions::for_role("jobs", Role::Parent).unwrap();
        let worker = Permissions::for_role("jobs", Role::Worker).unwrap();
        assert!(parent
            .publish()
            .iter()
            .all(|s| !worker.publish().contains(s)));
        assert!(parent
            .subscribe()
            .contains(&"_INBOX_LP.jobs.parent.>".to_owned()));
        assert!(worker
            .subscribe()
            .contains(&"_INBOX_LP.jobs.worker.>".to_owned()));
        assert!(Permissions::for_role("a.b", Role::Worker).is_err());
    }
}
