//! The command line, parsed by hand: one subcommand and a few flags do not
//! need an argument-parsing crate.

use std::path::PathBuf;
use std::time::Duration;

/// What `looppool top` was asked to do.
#[derive(Debug, PartialEq)]
pub(crate) struct Top {
    /// A pool by name (as its socket names it) or by its process id.
    pub(crate) pool: Option<String>,
    /// One pool's socket, instead of searching a directory.
    pub(crate) socket: Option<PathBuf>,
    /// Where to look for sockets, instead of the default directory.
    pub(crate) dir: Option<PathBuf>,
    /// Print one frame as text and exit.
    pub(crate) once: bool,
    /// Print each pool's snapshot as a JSON line and exit.
    pub(crate) json: bool,
    /// Between refreshes, and the span of the rates.
    pub(crate) interval: Duration,
    /// The width of a `--once` frame.
    pub(crate) width: u16,
}

/// The usage text.
pub(crate) const USAGE: &str = "\
usage: looppool top [POOL] [--socket PATH] [--dir DIR] [--once] [--json] [--interval MS] [--width N]

  POOL           a pool's name (as its socket names it) or its process id; default: every pool
  --socket PATH  the control socket of one pool
  --dir DIR      where to look for pools (default: $XDG_RUNTIME_DIR/looppool, else /tmp/looppool-<uid>)
  --once         print one frame as text (rates over one interval) and exit
  --json         print each pool's snapshot as one JSON line and exit
  --interval MS  refresh interval in milliseconds (default 1000)
  --width N      the width of a --once frame (default 120)

keys: q quit, tab next pool, up/down choose a worker, r recycle it,
      R rolling restart, + / - resize by one";

/// Parses the arguments after the program name.
pub(crate) fn parse(args: impl IntoIterator<Item = String>) -> Result<Top, String> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        Some("top") => {}
        Some("-h" | "--help") | None => return Err(USAGE.into()),
        Some(other) => return Err(format!("unknown command {other:?}\n{USAGE}")),
    }
    let mut top = Top {
        pool: None,
        socket: None,
        dir: None,
        once: false,
        json: false,
        interval: Duration::from_secs(1),
        width: 120,
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--once" => top.once = true,
            "--json" => top.json = true,
            "--socket" => top.socket = Some(value("--socket")?.into()),
            "--dir" => top.dir = Some(value("--dir")?.into()),
            "--interval" => {
                let ms: u64 = number(&value("--interval")?)?;
                top.interval = Duration::from_millis(ms.max(50));
            }
            "--width" => top.width = number::<u16>(&value("--width")?)?.max(40),
            "-h" | "--help" => return Err(USAGE.into()),
            flag if flag.starts_with('-') => return Err(format!("unknown option {flag}\n{USAGE}")),
            _ if top.pool.is_none() => top.pool = Some(arg),
            _ => return Err(format!("one pool at most\n{USAGE}")),
        }
    }
    Ok(top)
}

fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
    text.parse().map_err(|_| format!("not a number: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Top, String> {
        parse(line.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_flags_and_refuses_the_rest() {
        let top = args("top web --once --interval 250 --dir /d").unwrap();
        assert_eq!(top.pool.as_deref(), Some("web"));
        assert!(top.once && !top.json);
        assert_eq!(top.interval, Duration::from_millis(250));
        assert_eq!(top.dir, Some(PathBuf::from("/d")));
        assert!(args("top --socket").unwrap_err().contains("needs a value"));
        assert!(args("top --frobnicate")
            .unwrap_err()
            .contains("unknown option"));
        assert!(args("top a b").unwrap_err().contains("one pool"));
        assert!(args("stop").unwrap_err().contains("unknown command"));
        assert!(args("top --interval x")
            .unwrap_err()
            .contains("not a number"));
    }
}
