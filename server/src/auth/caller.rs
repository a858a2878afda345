//! [`Caller`]: who a request speaks for, as its handler takes it, and the checks the
//! protocol handlers make per message (may it write this document, are these changes its own).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use uuid::Uuid;

use super::attribution::{foreign_changes_in_sync, not_yours};
use super::{forbidden_problem, Principal};
use crate::problem::ApiError;
use crate::registry::Registry;

/// Who a request speaks for, as its handler takes it (an extractor): the principal of the
/// request's token, which [`guard`](super::guard) puts in the request's extensions; or,
/// with authentication off, anyone, who may do everything and names its own agent as the
/// endpoint says (`Concord-Agent`, `?agent=` on `/ws`, else the endpoint's default).
///
/// The protocol handlers (`/ws`, `/sync`, `/v1/repo`) check each message against it where
/// they decide to write (see "Per message" in [`crate::auth`]). A handler that takes it on
/// a route [`guard`](super::guard) does not pass answers 500: nobody is let through by
/// default.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None` with authentication off.
    token: Option<Arc<Principal>>,
}

impl Caller {
    /// Anyone: every request, with authentication off.
    pub fn anyone() -> Caller {
        Caller { token: None }
    }

    /// The holder of a token.
    pub fn with_token(principal: Arc<Principal>) -> Caller {
        Caller {
            token: Some(principal),
        }
    }

    /// The token's principal; `None` with authentication off.
    pub fn principal(&self) -> Option<&Principal> {
        self.token.as_deref()
    }

    /// The agent every write of the request is recorded under: the token's. `None` with
    /// authentication off, where the request names its agent.
    pub fn agent(&self) -> Option<&str> {
        self.token.as_deref().map(Principal::agent)
    }

    /// True for the `admin` scope, and for anyone with authentication off.
    pub fn is_admin(&self) -> bool {
        self.token.as_deref().is_none_or(Principal::is_admin)
    }

    /// May it read this document?
    pub fn can_read(&self, doc: Uuid) -> bool {
        self.token.as_deref().is_none_or(|p| p.can_read(doc))
    }

    /// May it write this document?
    pub fn can_write(&self, doc: Uuid) -> bool {
        self.token.as_deref().is_none_or(|p| p.can_write(doc))
    }

    /// May it fork this document? A fork is a new document: it needs write on the
    /// original and `write:*` (see the table in [`crate::auth`]).
    pub fn can_fork(&self, doc: Uuid) -> bool {
        self.token
            .as_deref()
            .is_none_or(|p| p.writes(Some(doc)) && p.writes_every_document())
    }

    /// The `403` problem saying that this caller may not do `what` ("write document …"),
    /// worded as [`guard`](super::guard) words it. With authentication off nobody is
    /// refused, so nothing calls it then; it names "anyone" if something does.
    pub fn forbidden(&self, what: &str) -> ApiError {
        match self.token.as_deref() {
            Some(principal) => forbidden_problem(principal, what),
            None => ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                format!("nobody may {what}"),
            ),
        }
    }

    /// Why it may not write `doc` (for an `error` message or a close frame); `None` if it may.
    pub fn refuse_write(&self, doc: Uuid) -> Option<String> {
        match self.token.as_deref() {
            Some(p) if !p.can_write(doc) => Some(format!(
                "the token of {} may read document {doc}, not write it",
                p.agent()
            )),
            _ => None,
        }
    }

    /// Checks the changes a sync message carries (`message`: its bytes as received) before
    /// they are written to `doc`: the caller must be able to write it, and without admin
    /// the Concord notes of the changes the document lacks may name only the caller's
    /// agent. (A peer may send back changes the document has, others' among them: a sync
    /// message can carry the whole document. Those are not written again.) `Err` says why
    /// not; the connection closes (1008).
    pub async fn check_sync_changes(
        &self,
        registry: &Registry,
        doc: Uuid,
        message: &[u8],
    ) -> Result<(), String> {
        let Some(principal) = self.token.as_deref() else {
            return Ok(());
        };
        if let Some(refused) = self.refuse_write(doc) {
            return Err(refused);
        }
        if principal.is_admin() {
            return Ok(());
        }
        let foreign = foreign_changes_in_sync(message, principal.agent());
        let Some((_, first)) = foreign.first() else {
            return Ok(());
        };
        // A change the document has stays: nothing is known of a document that cannot be
        // read (deleted meanwhile, say), so then every change is new.
        let new = registry
            .read::<_, crate::registry::Error>(doc, |loaded| {
                let automerge = loaded.doc.automerge();
                Ok(foreign
                    .iter()
                    .find(|(hash, _)| automerge.get_change_meta_by_hash(hash).is_none())
                    .map(|(_, named)| named.clone()))
            })
            .await
            .unwrap_or_else(|_| Some(first.clone()));
        match new {
            Some(named) => Err(not_yours(principal, &named)),
            None => Ok(()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::internal(
                "a handler takes its caller on a route that auth::guard does not pass",
            )
        })
    }
}
