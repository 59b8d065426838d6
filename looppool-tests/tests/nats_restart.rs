//! The broker killed with SIGKILL and restarted, three times, under load,
//! in both delivery modes, with a ledger of every task: each ends exactly
//! once, with its own value, and no worker is blamed for the broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use looppool::{Output, TaskId};
use looppool_nats::Delivery;
use looppool_tests::nats::NatsServer;
use looppool_tests::{recorder, Job};

const WORKER: &str = env!("CARGO_BIN_EXE_test-worker");

/// Tasks per run. Two runs (one per delivery mode) of this many tasks with
/// three broker crashes each stay within about a minute on a 2-core
/// machine in a debug build.
const TASKS: u64 = 60_000;

/// How each task ended, as the output stream told it.
#[derive(Debug, Default)]
struct Ledger {
    /// The id `submit` returned for task `i` (which emits `2 * i`).
    ids: HashMap<u64, TaskId>,
    /// Values received per task id.
    values: HashMap<TaskId, Vec<u64>>,
    /// Lost reports per task id.
    lost: HashMap<TaskId, usize>,
    /// Items that named no task, or failures.
    stray: Vec<String>,
}

impl Ledger {
    fn record(&mut self, item: Output<u64>) {
        match item {
            Output::Value {
                task: Some(task),
                value,
                ..
            } => self.values.entry(task).or_default().push(value),
            Output::Lost { task, .. } => *self.lost.entry(task).or_default() += 1,
            other => self.stray.push(format!("{other:?}")),
        }
    }

    /// `(wrong values, outputs delivered twice, tasks without exactly one
    /// fate, tasks lost)`.
    fn verdict(&self) -> (usize, usize, usize, usize) {
        let (mut wrong, mut twice, mut fates) = (0, 0, 0);
        for (i, id) in &self.ids {
            let values = self.values.get(id).map_or(&[][..], |v| v.as_slice());
            wrong += values.iter().filter(|&&v| v != 2 * i).count();
            twice += values.len().saturating_sub(1);
            let ended = values.len().min(1) + self.lost.get(id).copied().unwrap_or(0);
            if ended != 1 {
                fates += 1;
            }
        }
        // Values for ids that no submit returned are wrong too.
        let known: std::collections::HashSet<_> = self.ids.values().collect();
        wrong += self
            .values
            .iter()
            .filter(|(id, _)| !known.contains(id))
            .map(|(_, v)| v.len())
            .sum::<usize>();
        (wrong, twice, fates, self.lost.values().sum())
    }
}

/// What the broker holds for pool `name`, for a run that stalled: each
/// stream's messages and each consumer's counts (the worker index is in
/// the consumer's name: `wN-*` takes worker N's tasks, `oN-*` its outputs),
/// and for each task subject, the task numbers it holds in stream order
/// (numbers the worker took long ago are messages the broker brought back).
async fn broker_state(url: &str, name: &str) -> String {
    use futures_util::StreamExt;
    use looppool_nats::async_nats;
    let Ok(client) = async_nats::connect(url).await else {
        return " the broker cannot be reached".into();
    };
    let js = async_nats::jetstream::new(client);
    let mut out = String::new();
    for suffix in ["TASK", "OUT"] {
        let stream_name = format!("LP_{name}_{suffix}");
        let Ok(mut stream) = js.get_stream(&stream_name).await else {
            out += &format!("\n  {stream_name}: gone");
            continue;
        };
        let Ok(info) = stream.info().await else {
            continue;
        };
        let s = info.state.clone();
        out += &format!(
            "\n  {stream_name}: {} messages, sequences {}..={}",
            s.messages, s.first_sequence, s.last_sequence
        );
        if suffix == "TASK" {
            out += &task_numbers(&stream, s.first_sequence, s.last_sequence).await;
        }
        let mut names = stream.consumer_names();
        while let Some(Ok(consumer)) = names.next().await {
            let Ok(mut c) = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&consumer)
                .await
            else {
                continue;
            };
            if let Ok(i) = c.info().await {
                out += &format!(
                    "\n    {consumer}: pending {}, acknowledgements pending {}, pulls waiting {}, \
                     redelivered {}, delivered up to {}, acknowledged up to {}",
                    i.num_pending,
                    i.num_ack_pending,
                    i.num_waiting,
                    i.num_redelivered,
                    i.delivered.stream_sequence,
                    i.ack_floor.stream_sequence,
                );
            }
        }
    }
    out
}

/// Per task subject: its messages' task numbers (header `Lp-Task`) as runs
/// of consecutive numbers, in stream order.
async fn task_numbers(
    stream: &looppool_nats::async_nats::jetstream::stream::Stream,
    first: u64,
    last: u64,
) -> String {
    let mut runs = std::collections::BTreeMap::<String, Vec<(u64, u64)>>::new();
    for seq in first..=last {
        let Ok(m) = stream.get_raw_message(seq).await else {
            continue;
        };
        let k = m
            .headers
            .get("Lp-Task")
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .unwrap_or(0);
        let subject = runs.entry(m.subject.to_string()).or_default();
        match subject.last_mut() {
            Some((_, hi)) if *hi + 1 == k => *hi = k,
            _ => subject.push((k, k)),
        }
    }
    let mut out = String::new();
    for (subject, runs) in runs {
        let count: u64 = runs.iter().map(|(lo, hi)| hi - lo + 1).sum();
        let shown: Vec<_> = runs
            .iter()
            .take(12)
            .map(|(lo, hi)| format!("{lo}-{hi}"))
            .collect();
        out += &format!(
            "\n    {subject}: {count} messages, task numbers {}{}",
            shown.join(" "),
            if runs.len() > shown.len() { " ..." } else { "" }
        );
    }
    out
}

/// One run at a time: each keeps both cores of the CI machine busy, and two
/// at once left heartbeats late for reasons that have nothing to do with
/// the broker.
static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn crash_the_broker_three_times(name: &str, delivery: Delivery) {
    let _one = ONE_RUN_AT_A_TIME.lock().await;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let url = server.url.clone();
    let started = Instant::now();
    let (events, hook) = recorder();
    let builder = looppool_tests::nats::probe_pool(WORKER, &server.url, name);
    let drops = builder.drop_counts();
    let (pool, mut outputs) = builder
        .local_workers(2)
        .delivery(delivery)
        .configure(move |b| b.on_event(hook).max_results(8192))
        .start()
        .await
        .unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let producer = {
        let (pool, ledger) = (pool.clone(), ledger.clone());
        tokio::spawn(async move {
            for i in 0..TASKS {
                let id = pool.submit(Job::Double(i)).await.unwrap();
                ledger.lock().unwrap().ids.insert(i, id);
            }
        })
    };
    let mut server = Some(server);
    let mut crasher: Option<std::thread::JoinHandle<NatsServer>> = None;
    let mut crashes = 0;
    let mut ended = 0u64;
    while ended < TASKS {
        let Ok(item) = tokio::time::timeout(Duration::from_secs(60), outputs.next()).await else {
            let stats = pool.stats();
            let held: Vec<_> = stats.workers.iter().map(|w| w.in_flight).collect();
            let broker = broker_state(&url, name).await;
            panic!(
                "{name}: only {ended} of {TASKS} tasks ended within 60 s; held per worker \
                 {held:?}; dropped {drops:?}; events {:?}; the broker holds:{broker}",
                events.lock().unwrap()
            );
        };
        let item = item.expect("the stream goes on");
        ledger.lock().unwrap().record(item);
        ended += 1;
        // A crash at each quarter, once the previous restart is done.
        if crashes < 3 && ended >= TASKS * (crashes + 1) / 4 {
            if let Some(c) = crasher.take() {
                server = Some(c.join().unwrap());
            }
            let mut s = server.take().expect("the broker is back");
            crasher = Some(std::thread::spawn(move || {
                s.crash_restart(Duration::from_millis(700));
                s
            }));
            crashes += 1;
        }
    }
    producer.await.unwrap();
    let _server = crasher.map(|c| c.join().unwrap());
    let report = pool.shutdown().await;
    // Whatever arrives after every task ended is a second delivery.
    while let Some(item) = outputs.next().await {
        ledger.lock().unwrap().record(item);
    }
    let ledger = ledger.lock().unwrap();
    let (wrong, twice, fates, lost) = ledger.verdict();
    let crashed = looppool_tests::crashes(&events);
    eprintln!(
        "{name}: {TASKS} tasks, 3 broker crashes, {:.1} s: wrong values {wrong}, \
         delivered twice {twice}, without exactly one fate {fates}, lost {lost}, \
         stray {}, workers declared lost {}; messages dropped ({} duplicates, \
         {} stale, {} malformed)",
        started.elapsed().as_secs_f64(),
        ledger.stray.len(),
        crashed.len(),
        drops.duplicates(),
        drops.stale(),
        drops.malformed(),
    );
    assert_eq!(ledger.ids.len() as u64, TASKS);
    assert_eq!(wrong, 0, "{name}: tasks received another task's value");
    assert_eq!(twice, 0, "{name}: outputs delivered twice");
    assert_eq!(fates, 0, "{name}: tasks without exactly one fate");
    assert!(ledger.stray.is_empty(), "{name}: {:?}", ledger.stray);
    assert!(
        crashed.is_empty(),
        "{name}: healthy workers were declared lost: {crashed:?}"
    );
    assert_eq!(lost, 0, "{name}: no worker was lost, so no task was");
    assert!(report.drained, "{name}: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_three_broker_crashes_under_load_give_every_task_one_fate() {
    crash_the_broker_three_times("crash-alo", Delivery::AtLeastOnce { max_deliveries: 5 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_three_broker_crashes_under_load_give_every_task_one_fate() {
    crash_the_broker_three_times("crash-amo", Delivery::AtMostOnce).await;
}
