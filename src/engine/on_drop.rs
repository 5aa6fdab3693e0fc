//! A clean-up that runs when a future is dropped between two await points.

/// Runs its action when dropped, unless [`OnDrop::disarm`]ed first.
pub(super) struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnDrop<F> {
    pub(super) fn new(action: F) -> Self {
        OnDrop(Some(action))
    }

    /// The work got where the action is no longer needed: it does not run.
    pub(super) fn disarm(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(action) = self.0.take() {
            action();
        }
    }
}
