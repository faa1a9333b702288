//! The memory the gateway spends on bodies it reads whole for the policies
//! (requests, JSON answers): one budget for all of them, so many slow
//! bodies at once, each within its own size limit, cannot take all memory.

use super::ProxyError;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The gateway's budget, in bytes.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
}

/// What one body being read holds of the budget; returned when dropped.
#[derive(Debug, Default)]
pub(super) struct Held(Option<OwnedSemaphorePermit>);

impl BodyBudget {
    pub fn new(total: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
        }
    }

    /// Bytes held by bodies being read now.
    pub fn held(&self) -> usize {
        self.total - self.bytes.available_permits()
    }

    /// Adds `n` bytes to `held`, or refuses: the bytes are not waited for,
    /// as the bodies holding the budget may take minutes to arrive.
    pub(super) fn take(&self, held: &mut Held, n: usize) -> Result<(), ProxyError> {
        let Ok(n) = u32::try_from(n) else {
            return Err(self.exhausted());
        };
        if n == 0 {
            return Ok(());
        }
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| self.exhausted())?;
        match &mut held.0 {
            Some(p) => p.merge(permit),
            None => held.0 = Some(permit),
        }
        Ok(())
    }

    fn exhausted(&self) -> ProxyError {
        ProxyError::BodiesBusy {
            limit_mib: self.total >> 20,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bodies_share_the_budget_and_give_it_back_when_dropped() {
        let budget = BodyBudget::new(100);
        let mut a = Held::default();
        budget.take(&mut a, 60).unwrap();
        budget.take(&mut a, 20).unwrap();
        assert_eq!(budget.held(), 80);
        let mut b = Held::default();
        let refused = budget.take(&mut b, 30).unwrap_err();
        assert!(
            matches!(refused, ProxyError::BodiesBusy { .. }),
            "{refused}"
        );
        budget.take(&mut b, 20).unwrap();
        assert_eq!(budget.held(), 100);
        drop(a);
        assert_eq!(budget.held(), 20);
        budget.take(&mut b, 30).unwrap();
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
