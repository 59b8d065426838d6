//! Command-line options, and the sizes of each measurement.

use std::collections::BTreeSet;

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Mode {
    /// The raw limits, then the pool workloads, as a table or JSON lines.
    Bench,
    /// Parent memory over a long W1 stream.
    Soak { tasks: u64 },
    /// One run of one workload, printed as the Python peer harness's record.
    Peer {
        workload: String,
        workers: usize,
        n: Option<u64>,
    },
    /// Print the usage and exit.
    Help,
}

/// Parsed options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) mode: Mode,
    pub(crate) json: bool,
    pub(crate) quick: bool,
    /// `--broker`: only the broker workloads, and a missing `nats-server`
    /// is an error rather than a skip.
    pub(crate) broker: bool,
    /// Workloads to run (`W1`..`W6`, `raw`, `W1-broker`, `W2-broker`,
    /// `raw-js`); all when `None`.
    pub(crate) only: Option<BTreeSet<String>>,
    /// The CPU that the pinned measurements use (default: the first this
    /// process may run on).
    pub(crate) pin_cpu: Option<usize>,
    /// `--no-timings`: the soak's pool does not time tasks.
    pub(crate) timings: bool,
}

pub(crate) const USAGE: &str = "\
looppool-bench: the machine's socketpair limits, then looppool's workloads.

USAGE:
    looppool-bench [--quick] [--json] [--only W1,W2,...] [--pin-cpu N]
    looppool-bench --broker [--quick] [--json]
    looppool-bench --soak [--tasks N] [--no-timings] [--json]
    looppool-bench --workload Wn [--workers N] [--n N]

OPTIONS:
    --quick          fewer repetitions and smaller counts (a smoke run of a few seconds)
    --json           one JSON object per result line instead of a table
    --only LIST      comma-separated subset of W1..W6, W1-long (three pools of
                     10 M tasks each, against W1's fresh pools; then three more with
                     the parent on one CPU and the workers on the others), W5-64MiB (64 MiB blobs,
                     beside the raw echo of 64 MiB frames), hb (W1 with heartbeats and
                     without), hist (W1 with task timings and without), cancel, hol,
                     raw, W1-broker,
                     W2-broker and raw-js (raw limits that the chosen workloads are compared with
                     are always measured)
    --broker         only the broker workloads (W1-broker, W2-broker and their raw
                     JetStream limit) through a private nats-server, which must be
                     installed; a full run skips them when it is not
    --pin-cpu N      the CPU for the pinned W2 and ping-pong figures (default: the
                     first CPU this process may run on)
    --soak           parent memory over a long W1 stream (default 10,000,000 tasks)
    --tasks N        tasks of the soak
    --no-timings     the soak's pool times no task (to compare the two under callgrind)
    --workload Wn    run one workload once and print one JSON line in the format of
                     the Python peer harness (its run_all.py --extra-peer calls this)
    --workers N      workers of that run (default 2)
    --n N            tasks of that run (default: the workload's own count)
    --extra-peer     accepted and ignored (the harness selects this mode by --workload)
";

/// Parses the arguments after the program name.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut opts = Options {
        mode: Mode::Bench,
        json: false,
        quick: false,
        broker: false,
        only: None,
        pin_cpu: None,
        timings: true,
    };
    let mut soak = false;
    let mut tasks = None;
    let mut workload = None;
    let mut workers = 2usize;
    let mut n = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        // Both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String| {
            v.replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {v}"))
        };
        match flag.as_str() {
            "-h" | "--help" => opts.mode = Mode::Help,
            "--json" => opts.json = true,
            "--quick" => opts.quick = true,
            "--soak" => soak = true,
            "--no-timings" => opts.timings = false,
            "--broker" => opts.broker = true,
            "--extra-peer" => {}
            "--only" => {
                let list = value("--only")?;
                let mut set = BTreeSet::new();
                for item in list.split(',').filter(|s| !s.is_empty()) {
                    let item = normalise(item);
                    if !is_workload(&item)
                        && !is_broker_workload(&item)
                        && !is_control_workload(&item)
                        && item != "raw"
                    {
                        return Err(format!("--only: unknown workload {item:?}"));
                    }
                    set.insert(item);
                }
                opts.only = Some(set);
            }
            "--pin-cpu" => opts.pin_cpu = Some(number("--pin-cpu", value("--pin-cpu")?)? as usize),
            "--tasks" => tasks = Some(number("--tasks", value("--tasks")?)?),
            "--workload" => {
                let w = normalise(&value("--workload")?);
                if !is_workload(&w) {
                    return Err(format!("--workload: unknown workload {w:?}"));
                }
                workload = Some(w);
            }
            "--workers" => {
                workers = number("--workers", value("--workers")?)? as usize;
                if workers == 0 {
                    return Err("--workers must be at least 1".into());
                }
            }
            "--n" => n = Some(number("--n", value("--n")?)?),
            other => return Err(format!("unknown option {other:?}\n\n{USAGE}")),
        }
    }
    if opts.mode == Mode::Help {
        return Ok(opts);
    }
    if opts.broker && opts.only.is_none() {
        opts.only = Some(
            ["raw-js", "W1-broker", "W2-broker"]
                .map(String::from)
                .into(),
        );
    }
    if let Some(workload) = workload {
        opts.mode = Mode::Peer {
            workload,
            workers,
            n,
        };
    } else if soak {
        opts.mode = Mode::Soak {
            tasks: tasks.unwrap_or(if opts.quick { 1_000_000 } else { 10_000_000 }),
        };
    }
    Ok(opts)
}

fn normalise(s: &str) -> String {
    let s = s.trim();
    if s.eq_ignore_ascii_case("raw") {
        "raw".into()
    } else if is_control_workload(&s.to_ascii_lowercase()) {
        s.to_ascii_lowercase()
    } else if s.eq_ignore_ascii_case("raw-js") {
        "raw-js".into()
    } else if s.len() > 7 && s[s.len() - 7..].eq_ignore_ascii_case("-broker") {
        format!("{}-broker", s[..s.len() - 7].to_ascii_uppercase())
    } else {
        s.to_ascii_uppercase()
    }
}

fn is_workload(s: &str) -> bool {
    matches!(
        s,
        "W1" | "W1-LONG" | "W2" | "W3" | "W4" | "W5" | "W5-64MIB" | "W6"
    )
}

/// The control workloads (`crate::control`).
fn is_control_workload(s: &str) -> bool {
    matches!(s, "cancel" | "hol" | "hb" | "hist")
}

fn is_broker_workload(s: &str) -> bool {
    matches!(s, "W1-broker" | "W2-broker" | "raw-js")
}

impl Options {
    /// Whether workload `w` (or `raw`) was chosen.
    pub(crate) fn runs(&self, w: &str) -> bool {
        self.only.as_ref().is_none_or(|set| set.contains(w))
    }
}

/// How big and how often each measurement is.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Repetitions of each measurement (the median is reported).
    pub(crate) reps: usize,
    pub(crate) echo_frames_1pair: u64,
    pub(crate) echo_frames_per_pair_2pair: u64,
    pub(crate) ping_warmup: usize,
    pub(crate) ping_n: usize,
    pub(crate) bulk_n: u64,
    pub(crate) w1_n: u64,
    pub(crate) w1_warmup_ms: u64,
    /// Tasks through each of W1-long's pools.
    pub(crate) w1_long_n: u64,
    pub(crate) w2_warmup: usize,
    pub(crate) w2_n: usize,
    pub(crate) w3_n: u64,
    pub(crate) w4_n: u64,
    pub(crate) w5_n: u64,
}

impl Plan {
    pub(crate) fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                reps: 2,
                echo_frames_1pair: 1_000_000,
                echo_frames_per_pair_2pair: 500_000,
                ping_warmup: 200,
                ping_n: 1_000,
                bulk_n: 100,
                w1_n: 50_000,
                w1_warmup_ms: 100,
                w1_long_n: 500_000,
                w2_warmup: 200,
                w2_n: 1_000,
                w3_n: 4_000,
                w4_n: 400,
                w5_n: 50,
            }
        } else {
            Plan {
                reps: 5,
                echo_frames_1pair: 10_000_000,
                echo_frames_per_pair_2pair: 5_000_000,
                ping_warmup: 200,
                ping_n: 5_000,
                bulk_n: 1_000,
                w1_n: 200_000,
                w1_warmup_ms: 300,
                w1_long_n: 10_000_000,
                w2_warmup: 200,
                w2_n: 5_000,
                w3_n: 20_000,
                w4_n: 4_000,
                w5_n: 1_000,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Options, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn the_harness_call_selects_peer_mode() {
        let o = parse_str("--workload W6 --workers 8").unwrap();
        assert_eq!(
            o.mode,
            Mode::Peer {
                workload: "W6".into(),
                workers: 8,
                n: None
            }
        );
        let o = parse_str("--workload w1 --n 2000").unwrap();
        assert_eq!(
            o.mode,
            Mode::Peer {
                workload: "W1".into(),
                workers: 2,
                n: Some(2000)
            }
        );
        assert!(matches!(
            parse_str("--extra-peer --workload=W2").unwrap().mode,
            Mode::Peer { .. }
        ));
    }

    #[test]
    fn only_picks_workloads() {
        let o = parse_str("--quick --json --only W1,w2").unwrap();
        assert!(o.quick && o.json && o.runs("W1") && o.runs("W2") && !o.runs("W3"));
        assert!(parse_str("").unwrap().runs("W5"));
        assert!(parse_str("--only W9").is_err());
        let b = parse_str("--only w1-BROKER,raw-js").unwrap();
        assert!(b.runs("W1-broker") && b.runs("raw-js") && !b.runs("W1") && !b.broker);
        let b = parse_str("--broker").unwrap();
        assert!(b.broker && b.runs("W2-broker") && !b.runs("W1") && !b.runs("raw"));
        assert!(parse_str("--bogus").is_err());
    }

    #[test]
    fn soak_defaults_to_ten_million() {
        assert_eq!(
            parse_str("--soak").unwrap().mode,
            Mode::Soak { tasks: 10_000_000 }
        );
        assert_eq!(
            parse_str("--soak --tasks 1_000").unwrap().mode,
            Mode::Soak { tasks: 1000 }
        );
    }
}
