//! The original package's usage example, offline: a pool of 4 workers fetches
//! a list of URLs, each worker with an HTTP client created in its initialiser,
//! and the parent prints each URL with its `server` header.
//!
//! The example starts a small local HTTP server itself, so it needs no network:
//!
//! ```sh
//! cargo run --release --example fetch
//! ```

use std::rc::Rc;

use looppool::{BoxError, InitContext, Output, Pool, TaskContext, Worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fetches URLs; one HTTP client per worker process, reused for every task.
struct FetchWorker {
    client: reqwest::Client,
}

impl Worker for FetchWorker {
    const NAME: &'static str = "fetch";
    type Init = ();
    type Task = String;
    /// The URL and its `server` header.
    type Output = (String, Option<String>);

    async fn init(_: (), _cx: InitContext<Self::Output>) -> Result<Self, BoxError> {
        Ok(FetchWorker {
            client: reqwest::Client::new(),
        })
    }

    async fn handle(
        self: Rc<Self>,
        url: String,
        cx: TaskContext<Self::Output>,
    ) -> Result<(), BoxError> {
        let response = self.client.get(&url).send().await?;
        let server = response
            .headers()
            .get("server")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        cx.emit((url, server)).await?;
        Ok(())
    }
}

/// A tiny HTTP server on a free loopback port that names itself after the
/// path it was asked for.
async fn serve_locally() -> std::io::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let n = stream.read(&mut request).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&request[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let body = format!("hello from {path}\n");
                let name = path.trim_matches('/');
                let response = format!(
                    "HTTP/1.1 200 OK\r\nserver: {name}-server/1.0\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // In the worker processes the pool starts, this runs FetchWorker instead.
    looppool::worker_main!(FetchWorker);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let addr = serve_locally().await?;
        let (pool, mut outputs) = Pool::<FetchWorker>::builder()
            .workers(4)
            .name("fetch")
            .start()
            .await?;

        let urls: Vec<String> = ["python", "tornado", "google", "stackoverflow"]
            .iter()
            .map(|site| format!("http://{addr}/{site}/"))
            .collect();
        for url in &urls {
            pool.submit(url.clone()).await?;
        }
        for _ in 0..urls.len() {
            match outputs.next().await {
                Some(Output::Value {
                    value: (url, server),
                    worker,
                    ..
                }) => {
                    println!("{url} {server:?} (worker {worker})");
                }
                Some(Output::Failed(error)) => println!("failed: {error}"),
                Some(other) => println!("{other:?}"),
                None => break,
            }
        }
        pool.shutdown().await;
        Ok(())
    })
}
