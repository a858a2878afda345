//! What subscribers see: one [`ChangeEvent`] per change of a document, one [`FeedEvent`]
//! per create, change and delete of any document, published under the document's lock.

use super::*;

/// How many change events a document keeps for resuming subscribers.
pub const RECENT_EVENTS: usize = 1024;

/// How many bytes of operations (as JSON) the kept change events of one document may hold:
/// a few whole-value PUTs of a large document would otherwise keep that many copies of it.
/// A subscriber resuming from a version older than the kept events gets a snapshot.
pub const RECENT_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// One change, as subscribers see it.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeEvent {
    /// Event number, counted per document since it was loaded.
    pub seq: u64,
    /// The version before the change.
    pub previous: String,
    /// The version after it.
    pub version: String,
    /// The agent that wrote it.
    pub agent: Option<String>,
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// RFC 6902 operations from the previous value to this one.
    pub patch: Value,
}

/// One event of the global feed: a document was created, changed or deleted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FeedEvent {
    /// A new document (created or forked).
    Created {
        /// The document.
        id: Uuid,
        /// Its first version.
        version: String,
        /// Who created it.
        agent: Option<String>,
        /// When, ms since the epoch.
        time_ms: i64,
        /// Its strategy.
        strategy: concord_core::Strategy,
        /// How many changes it holds.
        changes: u64,
    },
    /// A write changed a document.
    Changed {
        /// The document.
        id: Uuid,
        /// Its version after the write.
        version: String,
        /// Who wrote.
        agent: Option<String>,
        /// When, ms since the epoch.
        time_ms: i64,
        /// Its strategy.
        strategy: concord_core::Strategy,
        /// How many changes it holds now.
        changes: u64,
        /// How many of them this write made.
        new_changes: u64,
    },
    /// A document was deleted (or a create failed to become durable).
    Deleted {
        /// The document.
        id: Uuid,
        /// When, ms since the epoch.
        time_ms: i64,
    },
}

/// How many global feed events a slow viewer may fall behind before it is told it lagged.
pub const FEED_BUFFER: usize = 1024;

/// What a subscriber gets first.
pub enum Catchup {
    /// The whole current value.
    Snapshot {
        /// The current version.
        version: String,
        /// The current value.
        value: Value,
    },
    /// The events after the version the subscriber has (possibly none).
    Events(Vec<Arc<ChangeEvent>>),
}

/// How many events a slow subscriber may fall behind before it is told it lagged.
pub const EVENT_BUFFER: usize = 256;

/// Records and broadcasts a change of the document: `patch` is the RFC 6902 operations
/// from the value subscribers were last told of to the present one.
pub(super) fn publish(
    slot: &Slot,
    loaded: &mut Loaded,
    patch: Vec<Value>,
    agent: Option<String>,
    time_ms: i64,
) {
    let patch = Value::Array(patch);
    loaded.event_seq += 1;
    let version = loaded.doc.version();
    let previous_version = std::mem::replace(&mut loaded.value_version, version.clone());
    let event = Arc::new(ChangeEvent {
        seq: loaded.event_seq,
        previous: previous_version.to_string(),
        version: version.to_string(),
        agent,
        time_ms,
        patch,
    });
    let bytes = concord_core::mirror::json_len(&event.patch);
    loaded.recent.push_back((Arc::clone(&event), bytes));
    loaded.recent_bytes = loaded.recent_bytes.saturating_add(bytes);
    while loaded.recent.len() > RECENT_EVENTS || loaded.recent_bytes > RECENT_EVENT_BYTES {
        let Some((_, dropped)) = loaded.recent.pop_front() else {
            break;
        };
        loaded.recent_bytes -= dropped;
    }
    // No subscribers is not an error.
    if let Some(events) = slot.events.get() {
        let _ = events.send(event);
    }
}

impl Registry {
    /// Subscribes to the global feed: one [`FeedEvent`] per create, change and delete.
    pub fn feed(&self) -> broadcast::Receiver<Arc<FeedEvent>> {
        self.feed.subscribe()
    }

    /// Tells every live stream to end; called once at shutdown.
    pub fn close_live(&self) {
        self.closing.send_replace(true);
    }

    /// Becomes `true` when live streams must end (see [`Registry::close_live`]).
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    pub(super) fn announce(&self, event: FeedEvent) {
        // No viewers is not an error.
        let _ = self.feed.send(Arc::new(event));
    }

    /// Subscribes to a document's changes: what the subscriber missed since `since` (or a
    /// snapshot), then every change, in order, from the returned receiver. Taken under the
    /// document's lock, so nothing falls between the two.
    pub async fn subscribe(
        &self,
        id: Uuid,
        since: Option<&Version>,
    ) -> Result<(Catchup, broadcast::Receiver<Arc<ChangeEvent>>), Error> {
        loop {
            let slot = self.slot(id).await?;
            self.coordinator.refresh(self, id, &slot).await?;
            let state = slot.state.read().await;
            if let Some(upto) = self.coordinator.unanswered(&slot) {
                drop(state);
                Self::wait_answered(&slot, upto).await;
                continue;
            }
            let SlotState::Live(loaded) = &*state else {
                continue;
            };
            let receiver = slot
                .events
                .get_or_init(|| broadcast::channel(EVENT_BUFFER).0)
                .subscribe();
            let current = loaded.doc.version();
            let catchup = match since {
                None => Catchup::Snapshot {
                    version: current.to_string(),
                    value: Value::clone(loaded.doc.value()),
                },
                Some(since) => {
                    loaded
                        .doc
                        .check_version(since)
                        .map_err(|e| Error::UnknownVersion(e.to_string()))?;
                    let since_text = since.to_string();
                    if *since == current {
                        Catchup::Events(Vec::new())
                    } else if let Some(i) = loaded
                        .recent
                        .iter()
                        .position(|(e, _)| e.version == since_text)
                    {
                        Catchup::Events(
                            loaded
                                .recent
                                .iter()
                                .skip(i + 1)
                                .map(|(e, _)| Arc::clone(e))
                                .collect(),
                        )
                    } else if loaded
                        .recent
                        .front()
                        .is_some_and(|(e, _)| e.previous == since_text)
                    {
                        // The version the oldest kept event started from (the one a document
                        // was created or loaded at): every kept event is news.
                        Catchup::Events(loaded.recent.iter().map(|(e, _)| Arc::clone(e)).collect())
                    } else {
                        // Too old to replay change by change: start over from a snapshot.
                        Catchup::Snapshot {
                            version: current.to_string(),
                            value: Value::clone(loaded.doc.value()),
                        }
                    }
                }
            };
            return Ok((catchup, receiver));
        }
    }
}
