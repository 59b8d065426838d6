//! A client of one pool's control socket: JSON lines, one request at a
//! time, with timeouts so that a wedged pool cannot hang the view.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use looppool::control::Snapshot;
use serde_json::Value;

/// How long a snapshot may take.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an action may take: a rolling restart waits for every worker
/// to drain.
pub(crate) const ACTION_TIMEOUT: Duration = Duration::from_secs(600);

/// A connection to one pool's control socket.
#[derive(Debug)]
pub(crate) struct Client {
    path: PathBuf,
    write: UnixStream,
    read: BufReader<UnixStream>,
}

impl Client {
    pub(crate) fn connect(path: &Path) -> io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_write_timeout(Some(SNAPSHOT_TIMEOUT))?;
        Ok(Client {
            path: path.to_owned(),
            read: BufReader::new(stream.try_clone()?),
            write: stream,
        })
    }

    /// Sends `request` and returns its reply, or the error reply's message.
    pub(crate) fn ask(&mut self, request: &Value, timeout: Duration) -> Result<Value, String> {
        let mut line = request.to_string();
        line.push('\n');
        let io = |e: io::Error| format!("{}: {e}", self.path.display());
        self.write.write_all(line.as_bytes()).map_err(io)?;
        self.read
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(io)?;
        let mut reply = String::new();
        match self.read.read_line(&mut reply) {
            Ok(0) => {
                return Err(format!(
                    "{}: the pool closed the connection",
                    self.path.display()
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(io(e)),
        }
        let reply: Value =
            serde_json::from_str(&reply).map_err(|e| format!("a reply that is not JSON: {e}"))?;
        if reply["ok"] == true {
            Ok(reply)
        } else {
            let kind = reply["error"]["kind"].as_str().unwrap_or("?");
            let message = reply["error"]["message"].as_str().unwrap_or("?");
            Err(format!("{kind}: {message}"))
        }
    }

    /// The pool's snapshot.
    pub(crate) fn snapshot(&mut self) -> Result<Snapshot, String> {
        let reply = self.ask(&serde_json::json!({"op": "snapshot"}), SNAPSHOT_TIMEOUT)?;
        serde_json::from_value(reply["snapshot"].clone())
            .map_err(|e| format!("a snapshot this version cannot read: {e}"))
    }
}
