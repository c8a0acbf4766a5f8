//! A listener's connection budget (`max_connections`), shared by all its listen sockets. Part
//! of the snapshot, carried over by listener name like a backend's live state, so that a
//! reload keeps the count of open connections; a changed limit is applied once the new
//! snapshot is in place (`listener::ListenerSet::apply`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The connection budget of one listener, shared by all its listen sockets.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    slots: Arc<Semaphore>,
    limit: Arc<AtomicUsize>,
}

impl ConnectionLimit {
    pub fn new(limit: usize) -> Self {
        ConnectionLimit {
            slots: Arc::new(Semaphore::new(limit)),
            limit: Arc::new(AtomicUsize::new(limit)),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A slot for a connection, if one is free now.
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Waits for a free slot.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.slots).acquire_owned().await.ok()
    }

    /// Client connections open on the listener now.
    pub fn open(&self) -> usize {
        self.limit().saturating_sub(self.slots.available_permits())
    }

    /// A reload changed `max_connections`: open connections stay; a lower limit takes effect
    /// as they close.
    pub fn set_limit(&self, new: usize) {
        let old = self.limit.swap(new, Ordering::Relaxed);
        if new > old {
            self.slots.add_permits(new - old);
        } else if new < old {
            let owed = (old - new) - self.slots.forget_permits(old - new);
            if let Ok(owed) = u32::try_from(owed)
                && owed > 0
            {
                // The rest are held by open connections: take them as those close.
                let slots = Arc::clone(&self.slots);
                tokio::spawn(async move {
                    if let Ok(permits) = slots.acquire_many_owned(owed).await {
                        permits.forget();
                    }
                });
            }
        }
    }
}
