//! A streamed A2A answer: the agent answers `SendStreamingMessage` or
//! `SubscribeToTask` with server-sent events, each one answer in its
//! binding's form (over JSON-RPC `data: {"jsonrpc": "2.0", "id": ...,
//! "result": {...}}`, over HTTP+JSON the result itself; an error as
//! `event: error` with the error). Each event is read within
//! [`MAX_EVENT_BYTES`] and passed on as soon as it is whole; the stream
//! ends when the agent ends it, at the first error, or when nobody reads
//! the events any more.

use super::super::{error_chain, EventSink, Failure};
use super::card::Binding;
use super::decode;

/// The largest event of an agent's stream accepted (bytes of its data).
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Relays every event of `response`'s stream to `sink`; the last event is
/// the call's output.
pub(super) async fn relay(
    binding: Binding,
    mut response: reqwest::Response,
    sink: &EventSink,
    agent_id: &str,
) -> Result<serde_json::Value, Failure> {
    let mut reader = SseReader::default();
    let mut last = None;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| Failure::Agent(format!("reading the agent's stream: {}", error_chain(&e))))?
    {
        for data in reader.push(&chunk)? {
            let event = decode(binding, &data)?;
            last = Some(relay_one(sink, agent_id, event).await?);
        }
    }
    last.ok_or_else(|| Failure::Agent("the agent's stream ended without an event".into()))
}

/// Relays one event (an answer in one piece is the stream's only event).
pub(super) async fn relay_one(
    sink: &EventSink,
    agent_id: &str,
    event: serde_json::Value,
) -> Result<serde_json::Value, Failure> {
    if sink.send(agent_id, event.clone()).await {
        Ok(event)
    } else {
        Err(Failure::Tool(
            "the caller stopped reading the stream; it was closed".into(),
        ))
    }
}

/// Server-sent events as the bytes arrive: the data of each whole event
/// (its `data:` lines joined by newlines). Comments, `event:`, `id:` and
/// `retry:` fields are not needed: an error is known by its JSON-RPC
/// `error` member.
#[derive(Default)]
struct SseReader {
    /// The line being read (no newline yet).
    line: Vec<u8>,
    /// The data of the event being read.
    data: Vec<u8>,
    /// Whether the event being read has a `data:` line.
    has_data: bool,
}

impl SseReader {
    /// Takes the next bytes of the stream; the data of the events they end.
    fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, Failure> {
        let mut whole = Vec::new();
        while let Some(at) = memchr::memchr(b'\n', bytes) {
            self.line.extend_from_slice(&bytes[..at]);
            bytes = &bytes[at + 1..];
            self.bounded()?;
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                if std::mem::take(&mut self.has_data) {
                    whole.push(std::mem::take(&mut self.data));
                }
                continue;
            }
            let (field, value) = match memchr::memchr(b':', &line) {
                Some(colon) => (&line[..colon], &line[colon + 1..]),
                None => (&line[..], &b""[..]),
            };
            if field == b"data" {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
        }
        self.line.extend_from_slice(bytes);
        self.bounded()?;
        Ok(whole)
    }

    fn bounded(&self) -> Result<(), Failure> {
        if self.line.len() + self.data.len() > MAX_EVENT_BYTES {
            return Err(Failure::Agent(format!(
                "an event of the agent's stream is longer than {MAX_EVENT_BYTES} bytes"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_whole_whatever_the_chunks() {
        let stream = b": keep-alive\r\ndata: {\"a\":1}\r\n\r\nevent: error\ndata: {\"b\":\ndata: 2}\n\nid: 7\n\ndata: {\"c\"";
        for split in 1..stream.len() {
            let mut reader = SseReader::default();
            let mut got = reader.push(&stream[..split]).unwrap();
            got.extend(reader.push(&stream[split..]).unwrap());
            assert_eq!(
                got,
                [b"{\"a\":1}".to_vec(), b"{\"b\":\n2}".to_vec()],
                "split at {split}"
            );
        }
    }

    #[test]
    fn an_event_over_the_cap_ends_the_stream() {
        let mut reader = SseReader::default();
        assert!(reader.push(b"data: ").unwrap().is_empty());
        let big = vec![b'x'; MAX_EVENT_BYTES / 2];
        assert!(reader.push(&big).is_ok());
        assert!(reader.push(b"\ndata: ").is_ok());
        let Err(Failure::Agent(message)) = reader.push(&big) else {
            panic!("an event over the cap was read");
        };
        assert!(message.contains("longer than"), "{message}");
    }
}
