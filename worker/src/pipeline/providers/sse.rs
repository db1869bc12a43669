//! Server-sent events (the `text/event-stream` format of the WHATWG HTML standard, §9.2),
//! parsed incrementally from a byte stream cut anywhere: chat-completions and webhook
//! agents stream their replies this way.

/// One event: its `event:` type (empty for the default `message`) and its data lines
/// joined by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field.
    pub event: String,
    /// The `data:` fields, joined.
    pub data: String,
}

/// Largest event accepted; a stream that never ends an event is malformed, not a reason
/// to grow without bound.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Incremental parser.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: String,
    data: Vec<String>,
    size: usize,
}

/// The stream broke the format.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("server-sent event larger than {MAX_EVENT_BYTES} bytes")]
pub struct TooLarge;

impl SseParser {
    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, TooLarge> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&line, &mut out);
            } else {
                self.line.push(b);
                self.size += 1;
                if self.size > MAX_EVENT_BYTES {
                    return Err(TooLarge);
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if !self.data.is_empty() {
                out.push(SseEvent {
                    event: std::mem::take(&mut self.event),
                    data: self.data.join("\n"),
                });
            }
            self.data.clear();
            self.event.clear();
            self.size = 0;
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
            None => (text.into_owned(), String::new()),
        };
        match field.as_str() {
            "data" => self.data.push(value),
            "event" => self.event = value,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STREAM: &str = ": keep-alive\n\ndata: {\"a\":1}\n\nevent: delta\r\ndata: line one\r\ndata: line two\r\n\r\ndata: [DONE]\n\n";

    #[test]
    fn events_comments_and_crlf() {
        let events = SseParser::default()
            .push(STREAM.as_bytes())
            .unwrap_or_default();
        assert_eq!(
            events,
            [
                SseEvent {
                    event: String::new(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "delta".into(),
                    data: "line one\nline two".into()
                },
                SseEvent {
                    event: String::new(),
                    data: "[DONE]".into()
                },
            ]
        );
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut p = SseParser::default();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert_eq!(p.push(&big), Err(TooLarge));
    }

    proptest! {
        /// However the stream is cut into chunks, the same events come out.
        #[test]
        fn chunking_does_not_matter(cuts in proptest::collection::vec(0usize..STREAM.len(), 0..12)) {
            let whole = SseParser::default().push(STREAM.as_bytes()).unwrap_or_default();
            let mut cuts = cuts;
            cuts.sort_unstable();
            let mut p = SseParser::default();
            let mut got = Vec::new();
            let mut last = 0;
            for c in cuts.into_iter().chain([STREAM.len()]) {
                got.extend(p.push(&STREAM.as_bytes()[last..c]).unwrap_or_default());
                last = c;
            }
            prop_assert_eq!(got, whole);
        }
    }
}
