//! Live streams' share of the connections: every WebSocket (`/v1/docs/{id}/ws`,
//! `/v1/docs/{id}/sync`, `/v1/repo`) and every Server-Sent Events stream
//! (`/v1/docs/{id}/events`, `/v1/events`) holds a [`StreamSlot`] for as long as it is open,
//! taken by its handler before it answers. When [`Limits::max_streams`] are open, the next
//! is answered `503` `too-many-streams` (with `Retry-After: 1`) and its connection closed;
//! the places left are for requests.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Limits;
use crate::problem::ApiError;

/// The live streams open at once, at most [`Limits::max_streams`].
#[derive(Debug)]
pub struct Streams {
    slots: Arc<Semaphore>,
    /// How many may be open.
    max: usize,
    /// The connection limit they are a share of (for the refusal's wording).
    connections: usize,
}

/// One open live stream's place: given back when it is dropped, with the stream.
#[derive(Debug)]
pub struct StreamSlot {
    _permit: OwnedSemaphorePermit,
}

impl Streams {
    /// The bound `limits` set.
    pub fn new(limits: &Limits) -> Streams {
        let max = limits.max_streams();
        Streams {
            slots: Arc::new(Semaphore::new(max)),
            max,
            connections: limits.max_connections,
        }
    }

    /// How many live streams may be open at once.
    pub fn max(&self) -> usize {
        self.max
    }

    /// How many are open now.
    pub fn open(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// A place for one more stream, or `503` `too-many-streams` if all are taken.
    pub fn admit(&self) -> Result<StreamSlot, ApiError> {
        match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => Ok(StreamSlot { _permit: permit }),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too-many-streams",
                format!(
                    "the server has its limit of {} live streams (WebSocket and event streams) \
                     open; the rest of its {} connections are kept for requests: retry shortly",
                    self.max, self.connections
                ),
            )
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            // Its place among the connections is free again at once, not when the client
            // next sends a request or the keep-alive ends.
            .with_header(header::CONNECTION, HeaderValue::from_static("close"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_get_their_share_of_the_connections() {
        let limits = |max_connections, stream_share| Limits {
            max_connections,
            stream_share,
            ..Limits::default()
        };
        // (connections, share %) -> streams
        let cases = [
            ((512, 75), 384),
            ((8, 75), 6),
            ((2, 75), 1),
            ((1, 75), 1),
            ((0, 75), 1),
            ((10, 100), 10),
            ((10, 200), 10),
            ((10, 1), 1),
            ((10, 0), 0),
        ];
        for ((connections, share), expected) in cases {
            let got = limits(connections, share).max_streams();
            assert_eq!(got, expected, "{connections} connections, {share} %");
        }
        assert_eq!(Limits::default().max_streams(), 384);
    }

    #[test]
    fn a_full_share_refuses_until_a_stream_ends() {
        let streams = Streams::new(&Limits {
            max_connections: 4,
            ..Limits::default()
        });
        assert_eq!(streams.max(), 3);
        let held: Vec<StreamSlot> = (0..3).map(|_| streams.admit().unwrap()).collect();
        assert_eq!(streams.open(), 3);
        let refused = streams.admit().unwrap_err();
        assert_eq!(
            (refused.status, refused.kind),
            (StatusCode::SERVICE_UNAVAILABLE, "too-many-streams")
        );
        drop(held);
        assert_eq!(streams.open(), 0);
        assert!(streams.admit().is_ok());
    }
}
