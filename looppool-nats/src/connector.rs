//! The parent side: a [`Connector`] whose workers join through the broker,
//! started by the pool on this machine or by anyone on another.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use looppool::transport::{ConnectFuture, Connection, Connector, Link, Peer};
use looppool::ExitStatus;
use tokio::sync::oneshot;

use crate::broker::Broker;
use crate::names;
use crate::relay::parent::{ChildCell, Ending, ParentRelay};
use crate::remote;
use crate::settings::Settings;
use crate::sync::lock;

/// How a pool's workers are reached, fixed when the pool starts.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The broker's URL, without credentials.
    pub(crate) url: String,
    /// What local workers authenticate with.
    pub(crate) worker_credentials: crate::Credentials,
    /// Worker indices below this are processes this pool starts.
    pub(crate) local: usize,
    pub(crate) program: Option<PathBuf>,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) worker_name: &'static str,
    pub(crate) heartbeat: Duration,
    pub(crate) silence: Duration,
    pub(crate) at_most_once: bool,
    pub(crate) max_running: usize,
    pub(crate) ack_wait: Duration,
    pub(crate) max_payload: usize,
    /// Where the relays count what they drop.
    pub(crate) drops: crate::DropCounts,
}

/// A worker asking to join.
struct Join {
    hello: Bytes,
    reply: async_nats::Subject,
    host: String,
}

/// A worker index waiting for its worker to join.
struct Waiter {
    token: Option<String>,
    tx: oneshot::Sender<Join>,
}

struct Shared {
    broker: Broker,
    client: async_nats::Client,
    plan: Plan,
    waiting: Mutex<HashMap<usize, Waiter>>,
    next_incarnation: AtomicU64,
}

/// Reaches a pool's workers through NATS JetStream.
pub(crate) struct NatsConnector {
    shared: Arc<Shared>,
    background: Vec<tokio::task::AbortHandle>,
}

impl Drop for NatsConnector {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

impl NatsConnector {
    /// Starts answering joins and publishing the parent's heartbeat.
    pub(crate) async fn start(
        broker: Broker,
        client: async_nats::Client,
        plan: Plan,
    ) -> Result<Self, String> {
        let names = broker.names.clone();
        let joins = client
            .subscribe(names.join_subject())
            .await
            .map_err(|e| format!("cannot listen for joins: {e}"))?;
        // Incarnations differ across restarts of the parent as well.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()) << 40;
        let shared = Arc::new(Shared {
            broker,
            client: client.clone(),
            plan,
            waiting: Mutex::new(HashMap::new()),
            next_incarnation: AtomicU64::new(seed & !0xffff),
        });
        let dispatcher = tokio::spawn(dispatch(shared.clone(), joins)).abort_handle();
        let beat = tokio::spawn(owner_heartbeat(
            client,
            names.owner_subject(),
            shared.plan.heartbeat,
        ))
        .abort_handle();
        Ok(NatsConnector {
            shared,
            background: vec![dispatcher, beat],
        })
    }
}

impl Connector for NatsConnector {
    fn connect(&self, index: usize) -> ConnectFuture<'_> {
        Box::pin(connect(self.shared.clone(), index))
    }

    fn describe(&self) -> String {
        format!(
            "NATS broker {} (pool {})",
            crate::broker::public_url(&self.shared.plan.url),
            self.shared.broker.names.pool()
        )
    }
}

/// Publishes the parent's heartbeat, by which workers know it lives.
async fn owner_heartbeat(client: async_nats::Client, subject: String, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let _ = client.publish(subject.clone(), Bytes::new()).await;
    }
}

/// Hands each join request to the index waiting for it, or refuses it.
async fn dispatch(shared: Arc<Shared>, mut joins: async_nats::Subscriber) {
    while let Some(m) = joins.next().await {
        let Some(reply) = m.reply.clone() else {
            continue;
        };
        let headers = m.headers.as_ref();
        let token = headers
            .and_then(|h| h.get(names::TOKEN))
            .map(|v| v.to_string());
        let want = names::header_u64(headers, names::WANT).map(|w| w as usize);
        let host = headers
            .and_then(|h| h.get(names::HOST))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let chosen = {
            let mut waiting = lock(&shared.waiting);
            waiting.retain(|_, w| !w.tx.is_closed());
            let index = match (&token, want) {
                (Some(t), _) => waiting
                    .iter()
                    .find(|(_, w)| w.token.as_deref() == Some(t))
                    .map(|(i, _)| *i),
                (None, Some(i)) => waiting.get(&i).filter(|w| w.token.is_none()).map(|_| i),
                (None, None) => waiting
                    .iter()
                    .filter(|(_, w)| w.token.is_none())
                    .map(|(i, _)| *i)
                    .min(),
            };
            index.and_then(|i| waiting.remove(&i))
        };
        let join = Join {
            hello: m.payload.clone(),
            reply: reply.clone(),
            host,
        };
        let refused = match chosen {
            Some(w) => w.tx.send(join).err().map(|_| "the pool stopped waiting".to_owned()),
            None => Some(match want {
                Some(i) => format!(
                    "pool {:?} has no open remote place {i} (it is taken, local, or beyond the pool's size)",
                    shared.broker.names.pool()
                ),
                None => format!("pool {:?} has no open remote place", shared.broker.names.pool()),
            }),
        };
        if let Some(why) = refused {
            let mut h = HeaderMap::new();
            h.insert(names::REFUSED, why.as_str());
            let _ = shared
                .client
                .publish_with_headers(reply, h, Bytes::new())
                .await;
        }
    }
}

/// Kills a local process that never joined when the attempt is abandoned.
struct ChildGuard(Option<Arc<Mutex<ChildCell>>>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.0.take() {
            let mut c = lock(&child);
            c.kill();
            let _ = c.wait();
        }
    }
}

async fn connect(shared: Arc<Shared>, index: usize) -> std::io::Result<Link> {
    let plan = &shared.plan;
    let local = index < plan.local;
    let token = local.then(|| {
        format!(
            "{:x}-{index}",
            shared.next_incarnation.fetch_add(1, Ordering::Relaxed)
        )
    });
    let (tx, mut rx) = oneshot::channel();
    lock(&shared.waiting).insert(
        index,
        Waiter {
            token: token.clone(),
            tx,
        },
    );
    let mut guard = ChildGuard(None);
    if let Some(token) = &token {
        let child = spawn_local_worker(&shared, index, token).await?;
        guard.0 = Some(Arc::new(Mutex::new(ChildCell::new(child))));
    }
    let join = match &guard.0 {
        None => rx
            .await
            .map_err(|_| std::io::Error::other("the pool stopped waiting for a join"))?,
        Some(child) => loop {
            tokio::select! {
                j = &mut rx => break j.map_err(|_| std::io::Error::other("the pool stopped waiting for a join"))?,
                _ = tokio::time::sleep(Duration::from_millis(20)) => {
                    let exited = lock(child).try_wait()?;
                    if let Some(status) = exited {
                        return Err(std::io::Error::other(format!(
                            "the worker program exited ({status}) before joining through the broker: \
                             does its main call looppool_nats::run_if_remote::<{}>() first?",
                            plan.worker_name
                        )));
                    }
                }
            }
        },
    };
    let incarnation = shared.next_incarnation.fetch_add(1, Ordering::Relaxed);
    let settings = Settings {
        index,
        incarnation,
        heartbeat: plan.heartbeat,
        silence: plan.silence,
        at_most_once: plan.at_most_once,
        max_running: plan.max_running,
        max_payload: plan.max_payload,
    };
    shared
        .broker
        .reset_worker(index, incarnation, plan.max_running, plan.ack_wait)
        .await
        .map_err(std::io::Error::other)?;
    let mut headers = HeaderMap::new();
    headers.insert(names::SETTINGS, settings.encode().as_str());
    shared
        .client
        .publish_with_headers(join.reply, headers, Bytes::new())
        .await
        .map_err(std::io::Error::other)?;
    tracing::debug!(pool = shared.broker.names.pool(), worker = index, host = %join.host, "worker joined");
    let (ours, theirs) = Connection::pair(256 * 1024);
    let ending = Arc::new(Mutex::new(Ending::default()));
    let child = guard.0.take();
    let relay = tokio::spawn(
        ParentRelay {
            broker: shared.broker.clone(),
            client: shared.client.clone(),
            settings,
            ack_wait: plan.ack_wait,
            conn: theirs,
            hello: join.hello,
            ending: ending.clone(),
            child: child.clone(),
            drops: plan.drops.clone(),
        }
        .run(),
    );
    Ok(Link {
        connection: ours,
        peer: Box::new(BrokerPeer {
            shared: shared.clone(),
            index,
            incarnation,
            child,
            ending,
            relay: relay.abort_handle(),
        }),
    })
}

async fn spawn_local_worker(
    shared: &Shared,
    index: usize,
    token: &str,
) -> std::io::Result<std::process::Child> {
    let plan = &shared.plan;
    let program = plan
        .program
        .clone()
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
    let mut cmd = std::process::Command::new(&program);
    for k in crate::Credentials::ENV {
        cmd.env_remove(k);
    }
    cmd.args(&plan.args)
        .envs(plan.worker_credentials.to_env())
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .env(remote::URL_ENV, &plan.url)
        .env(remote::POOL_ENV, shared.broker.names.pool())
        .env(remote::INDEX_ENV, index.to_string())
        .env(remote::WORKER_ENV, plan.worker_name)
        .env(remote::TOKEN_ENV, token)
        .stdin(std::process::Stdio::null());
    looppool::transport::spawn_tied_child(cmd)
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot execute worker program {}: {e}", program.display()),
            )
        })
}

/// A worker reached through the broker, as the pool's supervisor sees it.
struct BrokerPeer {
    shared: Arc<Shared>,
    index: usize,
    incarnation: u64,
    child: Option<Arc<Mutex<ChildCell>>>,
    ending: Arc<Mutex<Ending>>,
    relay: tokio::task::AbortHandle,
}

impl Peer for BrokerPeer {
    fn kill(&mut self) {
        if let Some(child) = &self.child {
            lock(child).kill();
        }
        self.relay.abort();
        lock(&self.ending).ended = true;
        // A remote worker is told to go; its consumers go in any case, so
        // that it receives nothing more.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = self.shared.clone();
            let (index, inc) = (self.index, self.incarnation);
            rt.spawn(async move {
                crate::relay::parent::kill_message(&shared.client, &shared.broker, index, inc)
                    .await;
                let _ = shared.broker.retire_worker(index).await;
            });
        }
    }

    fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        if let Some(child) = &self.child {
            return lock(child).try_wait();
        }
        let e = lock(&self.ending);
        Ok(e.ended.then(|| e.status.unwrap_or(ExitStatus::Unknown)))
    }

    fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(child) = &self.child {
            return lock(child).wait();
        }
        let e = lock(&self.ending);
        Ok(e.status.unwrap_or(ExitStatus::Unknown))
    }

    fn loss_cause(&mut self) -> Option<String> {
        lock(&self.ending).reason.take()
    }
}
