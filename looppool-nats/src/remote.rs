//! The worker side: a process that joins a pool through the broker.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::{Bytes, BytesMut};
use looppool::transport::Connection;
use looppool::Worker;
use tokio::io::AsyncReadExt;

use crate::auth::Credentials;
use crate::broker::public_url;
use crate::names::{self, Names};
use crate::relay::worker::WorkerRelay;
use crate::settings::Settings;

/// Environment variable: the broker's URL (`nats://host:4222`). A process
/// started with it (and [`POOL_ENV`]) is a remote worker.
pub const URL_ENV: &str = "LOOPPOOL_NATS_URL";
/// Environment variable: the id of the pool to join.
pub const POOL_ENV: &str = "LOOPPOOL_NATS_POOL";
/// Environment variable (optional): the worker index to join as.
pub const INDEX_ENV: &str = "LOOPPOOL_NATS_INDEX";
/// Environment variable (optional): which worker type to run, when the
/// program has several (the `Worker::NAME`).
pub const WORKER_ENV: &str = "LOOPPOOL_NATS_WORKER";
/// Environment variable (optional): seconds to keep trying to join (default 60).
pub const JOIN_TIMEOUT_ENV: &str = "LOOPPOOL_NATS_JOIN_TIMEOUT";
/// Set by a pool on the local workers it starts, to recognise their joins.
pub(crate) const TOKEN_ENV: &str = "LOOPPOOL_NATS_TOKEN";

/// A worker process joining a pool through a NATS broker: the same
/// [`Worker`] that runs as a local child process.
///
/// Most programs call [`run_if_remote`] first in `main`, which reads the
/// settings from the environment. Build one by hand to choose client
/// options (credentials, TLS) in code.
///
/// # Examples
///
/// ```no_run
/// # use std::rc::Rc;
/// # use looppool::{BoxError, InitContext, TaskContext, Worker};
/// # struct Doubler;
/// # impl Worker for Doubler {
/// #     const NAME: &'static str = "doubler";
/// #     type Init = ();
/// #     type Task = u64;
/// #     type Output = u64;
/// #     async fn init(_: (), _: InitContext<u64>) -> Result<Self, BoxError> { Ok(Doubler) }
/// #     async fn handle(self: Rc<Self>, x: u64, cx: TaskContext<u64>) -> Result<(), BoxError> {
/// #         cx.emit(2 * x).await?;
/// #         Ok(())
/// #     }
/// # }
/// use looppool_nats::RemoteWorker;
///
/// let options = async_nats::ConnectOptions::new().require_tls(true);
/// RemoteWorker::new("nats://broker.internal:4222", "jobs")
///     .connect_options(options)
///     .index(3)
///     .run::<Doubler>();
/// ```
#[derive(Clone)]
pub struct RemoteWorker {
    url: String,
    pool: String,
    index: Option<usize>,
    token: Option<String>,
    options: Option<async_nats::ConnectOptions>,
    credentials: Option<Credentials>,
    join_timeout: Duration,
}

impl std::fmt::Debug for RemoteWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credentials a URL may carry.
        f.debug_struct("RemoteWorker")
            .field("url", &public_url(&self.url))
            .field("pool", &self.pool)
            .field("index", &self.index)
            .field("credentials", &self.credentials)
            .field("join_timeout", &self.join_timeout)
            .finish_non_exhaustive()
    }
}

impl RemoteWorker {
    /// A worker that joins pool `pool` through the broker at `url`.
    pub fn new(url: impl Into<String>, pool: impl Into<String>) -> Self {
        RemoteWorker {
            url: url.into(),
            pool: pool.into(),
            index: None,
            token: None,
            options: None,
            credentials: None,
            join_timeout: Duration::from_secs(60),
        }
    }

    /// The settings in the environment ([`URL_ENV`], [`POOL_ENV`] and the
    /// optional ones), or `None` when [`URL_ENV`] is not set.
    pub fn from_env() -> Option<Result<Self, String>> {
        let url = std::env::var(URL_ENV).ok()?;
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some((|| {
            let pool =
                var(POOL_ENV).ok_or_else(|| format!("{URL_ENV} is set but {POOL_ENV} is not"))?;
            let mut w = RemoteWorker::new(url, pool);
            if let Some(i) = var(INDEX_ENV) {
                w.index = Some(
                    i.parse()
                        .map_err(|_| format!("{INDEX_ENV}={i:?} is not a worker index"))?,
                );
            }
            if let Some(s) = var(JOIN_TIMEOUT_ENV) {
                let secs: f64 = s
                    .parse()
                    .map_err(|_| format!("{JOIN_TIMEOUT_ENV}={s:?} is not a number of seconds"))?;
                w.join_timeout = Duration::from_secs_f64(secs.max(0.0));
            }
            w.token = var(TOKEN_ENV);
            let credentials = Credentials::from_env()?;
            w.credentials = (!credentials.is_none()).then_some(credentials);
            Ok(w)
        })())
    }

    /// Joins as worker `index` (by default, the first index the pool has
    /// open for remote workers).
    pub fn index(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    /// The NATS client's options: TLS configuration, names, timeouts. The
    /// inbox prefix is set to one of the pool's own.
    pub fn connect_options(mut self, options: async_nats::ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// How this worker authenticates to the broker (by default, what the
    /// environment gives, see [`Credentials::from_env`], or credentials in
    /// the URL).
    pub fn credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// How long to keep asking to join before giving up (default 60 s).
    pub fn join_timeout(mut self, timeout: Duration) -> Self {
        self.join_timeout = timeout;
        self
    }

    /// Runs worker `W` in this process until the pool stops it, then exits
    /// with its exit code.
    pub fn run<W: Worker>(self) -> ! {
        let code = looppool::worker::run_worker_runtime(async move {
            match self.serve::<W>().await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("looppool-nats worker: {e}");
                    1
                }
            }
        });
        std::process::exit(code)
    }

    /// The client's options and the URL to connect to (without its
    /// credentials, which the options carry).
    async fn options(&self, names: &Names) -> Result<(async_nats::ConnectOptions, String), String> {
        let (url, from_url) = crate::auth::split_url(&self.url);
        let o = self.options.clone().unwrap_or_default();
        let credentials = self.credentials.clone().unwrap_or_default();
        let o = credentials.or_secret(from_url).apply(o).await?;
        let o = o.custom_inbox_prefix(crate::auth::inbox_prefix(names, crate::Role::Worker));
        Ok((o, url))
    }

    /// Joins the pool and serves worker `W` until the pool stops it; returns
    /// the exit code. Must run inside a tokio `LocalSet` on a current-thread
    /// runtime, as [`run`](Self::run) provides.
    ///
    /// # Errors
    /// When the broker cannot be reached or the pool does not accept the
    /// worker within the join timeout.
    pub async fn serve<W: Worker>(self) -> Result<i32, String> {
        let names = Names::new(&self.pool)?;
        let (options, url) = self.options(&names).await?;
        let client = self.connect(options, &url).await?;
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        let (ours, theirs) = Connection::pair(256 * 1024);
        let serving = tokio::task::spawn_local(looppool::worker::serve::<W>(theirs));
        let (mut reader, writer) = ours.into_split();
        let mut buf = BytesMut::new();
        let hello = loop {
            if let Some(len) = looppool::transport::frame::frame_len(&buf) {
                break buf.split_to(len).freeze();
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return Ok(serving.await.unwrap_or(1)),
                Ok(_) => {}
            }
        };
        let settings = self.join(&client, &names, hello).await?;
        tracing::debug!(pool = names.pool(), worker = settings.index, "joined");
        WorkerRelay {
            client,
            js,
            names,
            settings,
        }
        .run(Box::pin(BufferedFirst { buf, reader }), writer, serving)
        .await
    }

    /// Connects, retrying while the broker cannot be reached (it may be
    /// starting) up to the join timeout, but not when it refuses this
    /// worker's credentials, which retrying cannot mend.
    async fn connect(
        &self,
        options: async_nats::ConnectOptions,
        url: &str,
    ) -> Result<async_nats::Client, String> {
        use async_nats::ConnectErrorKind as Kind;
        let once = tokio::time::timeout(self.join_timeout, options.clone().connect(url)).await;
        match once {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    Kind::AuthorizationViolation | Kind::Authentication
                ) =>
            {
                return Err(format!(
                    "the broker at {} refused this worker's credentials: {e}",
                    public_url(&self.url)
                ))
            }
            Ok(Err(_)) => {}
            Err(_) => return Err(self.unreachable()),
        }
        tokio::time::timeout(
            self.join_timeout,
            options.retry_on_initial_connect().connect(url),
        )
        .await
        .map_err(|_| self.unreachable())?
        .map_err(|e| {
            format!(
                "cannot connect to the broker at {}: {e}",
                public_url(&self.url)
            )
        })
    }

    /// Asks the pool for a place until it gives one or the timeout passes.
    async fn join(
        &self,
        client: &async_nats::Client,
        names: &Names,
        hello: Bytes,
    ) -> Result<Settings, String> {
        let deadline = Instant::now() + self.join_timeout;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        let mut last = String::from("no answer");
        while Instant::now() < deadline {
            let mut headers = HeaderMap::new();
            if let Some(i) = self.index {
                headers.insert(names::WANT, i.to_string().as_str());
            }
            if let Some(t) = &self.token {
                headers.insert(names::TOKEN, t.as_str());
            }
            headers.insert(names::HOST, host.as_str());
            let asked = client.request_with_headers(names.join_subject(), headers, hello.clone());
            match tokio::time::timeout(Duration::from_secs(2), asked).await {
                Ok(Ok(reply)) => {
                    let h = reply.headers.as_ref();
                    if let Some(why) = h.and_then(|h| h.get(names::REFUSED)) {
                        last = why.to_string();
                    } else if let Some(s) = h.and_then(|h| h.get(names::SETTINGS)) {
                        return Settings::decode(s.as_str());
                    } else {
                        last = "a join reply without settings".into();
                    }
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "no answer within 2 s".into(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if client.connection_state() != async_nats::connection::State::Connected {
            // Not the pool's fault: nothing reached it.
            return Err(self.unreachable());
        }
        Err(format!(
            "pool {:?} did not accept this worker within {:?} (last answer: {last})",
            names.pool(),
            self.join_timeout
        ))
    }

    /// Why a worker that never reached the broker gives up.
    fn unreachable(&self) -> String {
        format!(
            "cannot reach the broker at {} within {:?} (is it running, and is the URL right?)",
            public_url(&self.url),
            self.join_timeout
        )
    }
}

/// A reader that first yields bytes already read past the hello.
struct BufferedFirst {
    buf: BytesMut,
    reader: looppool::transport::ReadHalf,
}

impl tokio::io::AsyncRead for BufferedFirst {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.buf.is_empty() {
            let n = self.buf.len().min(out.remaining());
            let chunk = self.buf.split_to(n);
            out.put_slice(&chunk);
            return std::task::Poll::Ready(Ok(()));
        }
        self.reader.as_mut().poll_read(cx, out)
    }
}

/// Runs worker `W` as a remote worker when this process was started as one
/// ([`URL_ENV`] set, and [`WORKER_ENV`] unset or naming `W`), and exits when
/// it is done; returns otherwise. Call it first in `main`, beside
/// `looppool::worker_main!`.
pub fn run_if_remote<W: Worker>() {
    if std::env::var(WORKER_ENV).is_ok_and(|name| name != W::NAME) {
        return;
    }
    match RemoteWorker::from_env() {
        None => {}
        Some(Ok(w)) => w.run::<W>(),
        Some(Err(e)) => {
            eprintln!("looppool-nats worker: {e}");
            std::process::exit(2)
        }
    }
}
