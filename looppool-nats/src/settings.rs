//! What the parent tells a worker when it accepts its join.

use std::time::Duration;

/// Per-pool settings a joining worker receives in the join reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// The worker's index in the pool.
    pub(crate) index: usize,
    /// This life of the worker: its messages carry it, and messages of other
    /// incarnations are ignored.
    pub(crate) incarnation: u64,
    /// How often the worker and the parent publish heartbeats.
    pub(crate) heartbeat: Duration,
    /// Silence after which the other side counts as gone.
    pub(crate) silence: Duration,
    /// Acknowledge tasks on receipt rather than on completion.
    pub(crate) at_most_once: bool,
    /// Tasks the worker may hold: its pull batch.
    pub(crate) max_running: usize,
    /// Largest message the worker may publish.
    pub(crate) max_payload: usize,
}

impl Settings {
    /// As a header value: `key=value` pairs separated by `;`.
    pub(crate) fn encode(&self) -> String {
        format!(
            "index={};inc={};hb={};silence={};amo={};run={};payload={}",
            self.index,
            self.incarnation,
            self.heartbeat.as_millis(),
            self.silence.as_millis(),
            u8::from(self.at_most_once),
            self.max_running,
            self.max_payload
        )
    }

    pub(crate) fn decode(text: &str) -> Result<Self, String> {
        let mut fields = std::collections::HashMap::new();
        for pair in text.split(';') {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("malformed join settings {text:?}"))?;
            let v: u64 = v
                .parse()
                .map_err(|_| format!("malformed join setting {pair:?}"))?;
            fields.insert(k, v);
        }
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .ok_or_else(|| format!("join settings {text:?} lack {k:?}"))
        };
        Ok(Settings {
            index: get("index")? as usize,
            incarnation: get("inc")?,
            heartbeat: Duration::from_millis(get("hb")?.max(1)),
            silence: Duration::from_millis(get("silence")?.max(1)),
            at_most_once: get("amo")? != 0,
            max_running: get("run")?.max(1) as usize,
            max_payload: get("payload")?.max(1024) as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_their_header_form() {
        let s = Settings {
            index: 3,
            incarnation: 0xdead_beef,
            heartbeat: Duration::from_millis(200),
            silence: Duration::from_millis(1000),
            at_most_once: true,
            max_running: 64,
            max_payload: 1 << 20,
        };
        assert_eq!(Settings::decode(&s.encode()), Ok(s));
        assert!(Settings::decode("index=1").is_err());
        assert!(Settings::decode("index=x;inc=1").is_err());
    }
}
