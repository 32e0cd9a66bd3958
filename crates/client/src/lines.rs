//! Reading the server's answers: whole JSON bodies and NDJSON streams.

use futures_util::StreamExt;
use serde_json::Value as Json;
use tokio::io::AsyncRead;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

use crate::error::ClientError;

/// Longest NDJSON line accepted from the server, in bytes (64 MiB): room
/// for rows with large blobs, yet a broken or hostile server cannot make a
/// reader buffer without bound. A longer line is a
/// [`ClientError::Protocol`] error.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

pub(crate) async fn read_json(resp: reqwest::Response) -> Result<Json, ClientError> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ClientError::Protocol(format!(
            "{e}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ))
    })
}

/// NDJSON lines of a streaming response, each at most [`MAX_LINE_BYTES`].
pub(crate) struct Lines {
    lines: FramedRead<Box<dyn AsyncRead + Send + Unpin>, LinesCodec>,
}

impl Lines {
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        let body = resp.bytes_stream().map(|chunk| {
            // Kept as the I/O error's source, so it comes back out below.
            chunk.map_err(std::io::Error::other)
        });
        let reader: Box<dyn AsyncRead + Send + Unpin> = Box::new(StreamReader::new(body));
        Lines {
            lines: FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_LINE_BYTES)),
        }
    }

    /// The next line as JSON; `None` at the end of the body.
    pub(crate) async fn next(&mut self) -> Result<Option<Json>, ClientError> {
        let Some(line) = self.next_text().await? else {
            return Ok(None);
        };
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|e| ClientError::Protocol(format!("bad NDJSON line: {e}")))
    }

    /// The next non-blank line's text; `None` at the end of the body.
    pub(crate) async fn next_text(&mut self) -> Result<Option<String>, ClientError> {
        loop {
            let line = match self.lines.next().await {
                None => return Ok(None),
                Some(Ok(line)) => line,
                Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                    return Err(ClientError::Protocol(format!(
                        "a response line is over {} MiB, the most this client reads \
                         (patina_client::MAX_LINE_BYTES); query fewer or smaller rows",
                        MAX_LINE_BYTES >> 20
                    )))
                }
                Some(Err(LinesCodecError::Io(e)))
                    if e.kind() == std::io::ErrorKind::InvalidData =>
                {
                    return Err(ClientError::Protocol(format!(
                        "a response line is not UTF-8: {e}"
                    )))
                }
                Some(Err(LinesCodecError::Io(e))) => {
                    return Err(ClientError::Disconnected(e.to_string()))
                }
            };
            if line.trim_ascii().is_empty() {
                continue;
            }
            return Ok(Some(line));
        }
    }
}
