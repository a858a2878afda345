//! When an edit must stop: asked between its operations. Core reads no clock, so the
//! caller says what "too late" means (a server: its request's deadline has passed).

use std::sync::Arc;

/// Whether an edit must stop now ([`Document::set_deadline`](super::Document::set_deadline)).
#[derive(Clone)]
pub struct Deadline(Arc<dyn Fn() -> bool + Send + Sync>);

impl Deadline {
    /// A deadline that has passed once `passed` says so.
    pub fn new(passed: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Deadline(Arc::new(passed))
    }

    /// True once the edit must stop.
    pub fn passed(&self) -> bool {
        (self.0)()
    }
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("passed", &self.passed())
            .finish()
    }
}
