//! Write strategies as policies, pure functions of what a write names and what the
//! document is: the base version a write is applied at, or a typed [`Refusal`]. The server
//! renders a refusal once per transport (problem+json over HTTP, an `error` message over
//! WebSocket); nothing here knows about either.

use crate::{Strategy, Version};

/// How a write changes a document, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// A whole new value.
    Put,
    /// JSON Patch or merge patch operations (and the lost edits' restore and dismiss).
    Patch,
    /// Raw Automerge changes (HTTP, `/sync`, `/v1/repo`).
    Changes,
    /// A fork merged back.
    Merge,
}

/// The versions a writer says it read (HTTP `If-Match`, RFC 9110 section 13.1.1, compared
/// strongly; a WebSocket `base`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: against whatever is current.
    Any,
    /// One strong entity tag: a version the writer read.
    Version(Version),
    /// A list of entity tags, of which any may match: the versions of its strong tags, in
    /// the order given. Weak tags are left out, as they never match; a list of weak tags
    /// only is empty, and matches nothing.
    AnyOf(Vec<Version>),
}

impl IfMatch {
    /// The versions of the strong tags (none for `*`).
    pub fn versions(&self) -> &[Version] {
        match self {
            IfMatch::Any => &[],
            IfMatch::Version(v) => std::slice::from_ref(v),
            IfMatch::AnyOf(versions) => versions,
        }
    }
}

/// A lease of the lock strategy: who may write, until when, with which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The fencing token; only the newest one may write.
    pub token: u64,
    /// When the lease ends, ms since the epoch.
    pub expires_at_ms: i64,
    /// The agent holding it: the only one that may write with its token or release it.
    pub agent: String,
}

/// Who presents a lock document's lease: the agent writing (the token's with
/// authentication on, its `Concord-Agent` without) and the token it sent, if any. A token
/// is bound to the agent that took the lease, so knowing it is not enough to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder<'a> {
    /// The agent writing or releasing.
    pub agent: &'a str,
    /// The token sent (`Concord-Lock`, a WebSocket `lock`, an MCP `lock_token`).
    pub token: Option<u64>,
}

/// Why a document's strategy refuses a write. Each has a stable [`Refusal::kind`], the
/// problem type clients match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The write names no version where the strategy needs one.
    #[error("{what} needs If-Match with the version you read (the ETag of your GET), or If-Match: * to write against the current version")]
    IfMatchRequired {
        /// What needs it ("a PUT", …).
        what: &'static str,
    },
    /// The version the writer read is not the current one.
    #[error("the document changed since the version you read; it is now {current}: read it again and retry")]
    Stale {
        /// The current version.
        current: Version,
    },
    /// Only weak entity tags were named; under strong comparison none matches.
    #[error("If-Match held only weak entity tags (W/\"…\"), which never match a write's precondition; send the version you read as a strong tag, \"<version>\" (the document is now {current})")]
    WeakOnly {
        /// The current version.
        current: Version,
    },
    /// The strategy does not take this kind of write at all.
    #[error("{0}")]
    Strategy(String),
    /// A lock document's write without a lease token.
    #[error("a lock document needs the token of a lease: POST /v1/docs/{{id}}/lock, then send Concord-Lock: <token>")]
    LockRequired,
    /// The token is not the newest one issued; `newer` if a newer one was. No refusal
    /// names a token, neither the one sent nor the holder's: a token is a lease's secret.
    #[error("{}", if *.newer {
        "this lease token is fenced off: a newer lease was issued since; take the lock again"
    } else {
        "this token is not the token of the current lease; take the lock"
    })]
    Fenced {
        /// Whether a newer lease than the token's was issued.
        newer: bool,
    },
    /// A write or release with the current lease's token by an agent that did not take
    /// the lease: only its holder may use it.
    #[error("this token is not the token of a lease you hold: only the agent that took a lease may write with it or release it; take the lock yourself")]
    NotHolder,
    /// The newest token's lease ran out (or was released).
    #[error("your lease expired; take the lock again")]
    LeaseExpired,
    /// A queue document's writer lock was lost to another node while the write was applied.
    #[error("another node wrote this queue document while this write was applied (its writer lock was lost); nothing was applied: retry")]
    WriterContended,
    /// A merge of a document that is not a fork of the target.
    #[error("{fork} is not a fork of {target}")]
    NotAFork {
        /// The document offered as a fork.
        fork: uuid::Uuid,
        /// The document merged into.
        target: uuid::Uuid,
    },
}

impl Refusal {
    /// The problem type: a stable identifier clients match on.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::IfMatchRequired { .. } => "if-match-required",
            Refusal::Stale { .. } => "stale-version",
            Refusal::WeakOnly { .. } => "weak-etag",
            Refusal::Strategy(_) => "strategy-refuses",
            Refusal::LockRequired => "lock-required",
            Refusal::Fenced { .. } | Refusal::NotHolder => "fenced",
            Refusal::LeaseExpired => "lease-expired",
            Refusal::WriterContended => "writer-contended",
            Refusal::NotAFork { .. } => "not-a-fork",
        }
    }

    /// The current version, for refusals that tell the writer what to read again.
    pub fn current(&self) -> Option<&Version> {
        match self {
            Refusal::Stale { current } | Refusal::WeakOnly { current } => Some(current),
            _ => None,
        }
    }
}

/// Applies a document's strategy to a write: the base version to apply it at (`None`: the
/// present), or why it is refused. `lease` is the document's newest lease, `holder` the
/// writer and the token it sent, `now_ms` the server's clock.
pub fn admit(
    strategy: Strategy,
    kind: WriteKind,
    if_match: Option<&IfMatch>,
    lease: Option<&Lease>,
    holder: Holder<'_>,
    now_ms: i64,
    current: &Version,
) -> Result<Option<Version>, Refusal> {
    if kind == WriteKind::Merge {
        return match strategy {
            Strategy::Branches | Strategy::Crdt => Ok(None),
            _ => Err(Refusal::Strategy(format!(
                "only branches and crdt documents take merges; this one is {strategy}"
            ))),
        };
    }
    if strategy == Strategy::Lock {
        check_lease(lease, holder, now_ms)?;
    }
    base_for(strategy, kind, if_match, current)
}

/// Whether a document of this strategy takes raw Automerge changes (HTTP, `/sync`,
/// `/v1/repo`): only a crdt document does; the others' rules would be bypassed.
pub fn takes_changes(strategy: Strategy) -> bool {
    strategy == Strategy::Crdt
}

/// Whether a document of this strategy may be forked (branches and crdt documents).
pub fn may_fork(strategy: Strategy) -> Result<(), Refusal> {
    match strategy {
        Strategy::Branches | Strategy::Crdt => Ok(()),
        _ => Err(Refusal::Strategy(format!(
            "only branches and crdt documents can be forked; this one is {strategy}"
        ))),
    }
}

/// The version a write is applied at (`None`: the current one), or why it is refused; the
/// lease of a lock document is [`check_lease`]'s.
pub fn base_for(
    strategy: Strategy,
    kind: WriteKind,
    if_match: Option<&IfMatch>,
    current: &Version,
) -> Result<Option<Version>, Refusal> {
    if kind == WriteKind::Changes && !takes_changes(strategy) {
        return Err(Refusal::Strategy(format!(
            "raw Automerge changes bypass the {strategy} strategy; only crdt documents accept them"
        )));
    }
    let stale = || Refusal::Stale {
        current: current.clone(),
    };
    let weak_only = || Refusal::WeakOnly {
        current: current.clone(),
    };
    match strategy {
        // With a list of tags, a crdt write is applied at the current version if the list
        // names it, else at the first strong tag listed (any listed version is one the
        // writer read; the first is taken as the one it means).
        Strategy::Crdt => match (kind, if_match) {
            (WriteKind::Put, None) => Err(Refusal::IfMatchRequired { what: "a PUT" }),
            (_, None | Some(IfMatch::Any)) => Ok(None),
            (_, Some(tags)) => match tags.versions() {
                [] => Err(weak_only()),
                versions if versions.contains(current) => Ok(Some(current.clone())),
                [first, ..] => Ok(Some(first.clone())),
            },
        },
        Strategy::Lww => Ok(None),
        // Passes if any strong tag listed is the current version.
        Strategy::Optimistic => match if_match {
            None => Err(Refusal::IfMatchRequired {
                what: "an optimistic document's write",
            }),
            Some(IfMatch::Any) => Ok(None),
            Some(tags) => match tags.versions() {
                [] => Err(weak_only()),
                versions if versions.contains(current) => Ok(None),
                _ => Err(stale()),
            },
        },
        // The lease was checked by `check_lease`; the holder read after locking.
        Strategy::Lock => Ok(None),
        Strategy::Queue => match (kind, if_match) {
            (WriteKind::Patch, None) => Ok(None),
            _ => Err(Refusal::Strategy(
                "a queue document accepts only intents: PATCH operations without If-Match, applied in arrival order".into(),
            )),
        },
        Strategy::Branches => Err(Refusal::Strategy(
            "a branches document takes no direct writes: fork it (POST /v1/docs/{id}/fork), edit the fork, then merge the fork back (POST /v1/docs/{id}/merge)".into(),
        )),
    }
}

/// Checks a lock-strategy write's token: it must be the newest token issued, its lease
/// must not have expired (fencing: a writer that paused past its lease cannot write), and
/// the writer must be the agent that took it (a token is no key for anyone else).
pub fn check_lease(lease: Option<&Lease>, holder: Holder<'_>, now_ms: i64) -> Result<(), Refusal> {
    let Some(token) = holder.token else {
        return Err(Refusal::LockRequired);
    };
    match lease {
        Some(lease) if lease.token == token && lease.agent != holder.agent => {
            Err(Refusal::NotHolder)
        }
        Some(lease) if lease.token == token && lease.expires_at_ms > now_ms => Ok(()),
        Some(lease) if lease.token == token => Err(Refusal::LeaseExpired),
        lease => Err(Refusal::Fenced {
            newer: lease.is_some_and(|l| l.token > token),
        }),
    }
}

/// Checks a release of a lease: `holder` must name the current lease with its token and be
/// the agent that took it. The refusal is the same whether the token is another's or no
/// one's, so that a release reveals nothing about other agents' tokens.
pub fn check_release(lease: Option<&Lease>, holder: Holder<'_>) -> Result<(), Refusal> {
    match (lease, holder.token) {
        (Some(lease), Some(token)) if lease.token == token && lease.agent == holder.agent => Ok(()),
        _ => Err(Refusal::NotHolder),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(byte: u8) -> Version {
        Version::new(vec![automerge::ChangeHash([byte; 32])])
    }

    /// `(strategy, kind, if_match, expected)`: `Ok(None)` is "at the current version",
    /// `Err(kind)` a refusal.
    type Case<'a> = (
        Strategy,
        WriteKind,
        Option<&'a IfMatch>,
        Result<Option<Version>, &'static str>,
    );

    #[test]
    fn policy_table() {
        use Strategy::*;
        use WriteKind::*;
        let current = v(1);
        let old = IfMatch::Version(v(2));
        let now = IfMatch::Version(v(1));
        // Lists: with the current version (not first), without it, and of weak tags only.
        let with_now = IfMatch::AnyOf(vec![v(3), v(1), v(2)]);
        let without = IfMatch::AnyOf(vec![v(3), v(2)]);
        let weak = IfMatch::AnyOf(vec![]);
        let (required, stale, weak_etag, refuses) = (
            "if-match-required",
            "stale-version",
            "weak-etag",
            "strategy-refuses",
        );
        let cases: Vec<Case<'_>> = vec![
            (Crdt, Put, None, Err(required)),
            (Crdt, Put, Some(&IfMatch::Any), Ok(None)),
            (Crdt, Put, Some(&old), Ok(Some(v(2)))),
            (Crdt, Put, Some(&with_now), Ok(Some(v(1)))),
            (Crdt, Put, Some(&without), Ok(Some(v(3)))),
            (Crdt, Put, Some(&weak), Err(weak_etag)),
            (Crdt, Patch, None, Ok(None)),
            (Crdt, Patch, Some(&old), Ok(Some(v(2)))),
            (Crdt, Patch, Some(&without), Ok(Some(v(3)))),
            (Crdt, Patch, Some(&weak), Err(weak_etag)),
            (Crdt, Changes, None, Ok(None)),
            (Lww, Put, None, Ok(None)),
            (Lww, Put, Some(&old), Ok(None)),
            (Lww, Put, Some(&weak), Ok(None)),
            (Lww, Changes, None, Err(refuses)),
            (Optimistic, Put, None, Err(required)),
            (Optimistic, Put, Some(&old), Err(stale)),
            (Optimistic, Put, Some(&now), Ok(None)),
            (Optimistic, Put, Some(&with_now), Ok(None)),
            (Optimistic, Put, Some(&without), Err(stale)),
            (Optimistic, Put, Some(&weak), Err(weak_etag)),
            (Optimistic, Patch, Some(&IfMatch::Any), Ok(None)),
            (Optimistic, Patch, Some(&with_now), Ok(None)),
            (Optimistic, Patch, Some(&weak), Err(weak_etag)),
            (Lock, Put, Some(&old), Ok(None)),
            (Lock, Put, Some(&weak), Ok(None)),
            (Queue, Patch, None, Ok(None)),
            (Queue, Patch, Some(&old), Err(refuses)),
            (Queue, Patch, Some(&weak), Err(refuses)),
            (Queue, Put, Some(&IfMatch::Any), Err(refuses)),
            (Branches, Put, Some(&IfMatch::Any), Err(refuses)),
            (Branches, Patch, None, Err(refuses)),
            (Branches, Changes, None, Err(refuses)),
        ];
        for (strategy, kind, if_match, expected) in cases {
            let got = base_for(strategy, kind, if_match, &current).map_err(|e| e.kind());
            assert_eq!(got, expected, "{strategy} {kind:?} {if_match:?}");
        }
    }

    #[test]
    fn merges_go_only_into_branches_and_crdt_documents() {
        let current = v(1);
        for strategy in Strategy::ALL {
            let nobody = Holder {
                agent: "a",
                token: None,
            };
            let got = admit(strategy, WriteKind::Merge, None, None, nobody, 0, &current)
                .map_err(|e| e.kind());
            let expected = match strategy {
                Strategy::Branches | Strategy::Crdt => Ok(None),
                _ => Err("strategy-refuses"),
            };
            assert_eq!(got, expected, "{strategy}");
        }
    }

    #[test]
    fn a_lock_document_checks_the_lease_before_the_base() {
        let current = v(1);
        let got = admit(
            Strategy::Lock,
            WriteKind::Put,
            Some(&IfMatch::Any),
            None,
            Holder {
                agent: "a",
                token: None,
            },
            0,
            &current,
        );
        assert_eq!(got, Err(Refusal::LockRequired));
    }

    #[test]
    fn refusals_that_name_the_present_carry_it() {
        let current = v(1);
        let e = base_for(
            Strategy::Optimistic,
            WriteKind::Put,
            Some(&IfMatch::Version(v(2))),
            &current,
        )
        .unwrap_err();
        assert_eq!(e.current(), Some(&current));
        assert!(e.to_string().contains(&current.to_string()), "{e}");
    }

    #[test]
    fn fencing_table() {
        let lease = Lease {
            token: 10,
            expires_at_ms: 1000,
            agent: "a".into(),
        };
        let holder = |agent, token| Holder { agent, token };
        let cases = [
            (Some(&lease), holder("a", Some(10)), 999, Ok(())),
            (
                Some(&lease),
                holder("a", Some(10)),
                1000,
                Err("lease-expired"),
            ),
            (Some(&lease), holder("a", Some(9)), 500, Err("fenced")),
            (Some(&lease), holder("a", Some(11)), 500, Err("fenced")),
            (None, holder("a", Some(10)), 500, Err("fenced")),
            (Some(&lease), holder("a", None), 500, Err("lock-required")),
            // The holder's token in another agent's hands is no key, expired or not.
            (Some(&lease), holder("b", Some(10)), 999, Err("fenced")),
            (Some(&lease), holder("b", Some(10)), 1000, Err("fenced")),
        ];
        for (lease, holder, now, expected) in cases {
            let got = check_lease(lease, holder, now).map_err(|e| e.kind());
            assert_eq!(got, expected, "{lease:?} {holder:?} {now}");
        }
        assert_eq!(
            check_lease(Some(&lease), holder("b", Some(10)), 500),
            Err(Refusal::NotHolder)
        );
        let newer = check_lease(Some(&lease), holder("a", Some(9)), 500).unwrap_err();
        assert_eq!(newer, Refusal::Fenced { newer: true });
    }

    #[test]
    fn only_the_holder_releases() {
        let lease = Lease {
            token: 10,
            expires_at_ms: 1000,
            agent: "a".into(),
        };
        let holder = |agent, token| Holder { agent, token };
        assert_eq!(check_release(Some(&lease), holder("a", Some(10))), Ok(()));
        for (lease, holder) in [
            (Some(&lease), holder("b", Some(10))),
            (Some(&lease), holder("a", Some(9))),
            (Some(&lease), holder("a", None)),
            (None, holder("a", Some(10))),
        ] {
            assert_eq!(check_release(lease, holder), Err(Refusal::NotHolder));
        }
    }

    /// No lease refusal names a token: not the one sent (which may be another agent's), and
    /// not the newest one (which belongs to its holder).
    #[test]
    fn lease_refusals_name_no_token() {
        for refusal in [
            Refusal::Fenced { newer: true },
            Refusal::Fenced { newer: false },
            Refusal::NotHolder,
            Refusal::LeaseExpired,
        ] {
            let text = refusal.to_string();
            assert!(!text.chars().any(|c| c.is_ascii_digit()), "{text}");
        }
    }
}
