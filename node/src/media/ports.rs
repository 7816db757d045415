//! The ports of the receiving ends of relay links. Two nodes talking over their one media
//! port each would share one address pair for every link between them, and a datagram could
//! not tell its link; so the receiving end of each link binds a port of its own from this
//! range. The pool hands them out round-robin so a port just released (whose packets may still
//! be in flight) is the last to be reused.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
#[error("udp port range exhausted ({0} ports in use)")]
pub struct Exhausted(usize);

#[derive(Clone)]
pub struct PortPool {
    inner: Arc<Mutex<PoolState>>,
}

struct PoolState {
    range: (u16, u16),
    next: u16,
    in_use: BTreeSet<u16>,
}

impl PortPool {
    /// `(0, 0)` means "let the OS pick": leases then carry port 0.
    pub fn new(range: (u16, u16)) -> Self {
        PortPool {
            inner: Arc::new(Mutex::new(PoolState {
                range,
                next: range.0,
                in_use: BTreeSet::new(),
            })),
        }
    }

    pub fn lease(&self) -> Result<PortLease, Exhausted> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (lo, hi) = s.range;
        if lo == 0 && hi == 0 {
            return Ok(PortLease {
                port: 0,
                pool: None,
            });
        }
        let size = usize::from(hi - lo) + 1;
        for _ in 0..size {
            let candidate = s.next;
            s.next = if candidate >= hi { lo } else { candidate + 1 };
            if s.in_use.insert(candidate) {
                return Ok(PortLease {
                    port: candidate,
                    pool: Some(self.clone()),
                });
            }
        }
        Err(Exhausted(s.in_use.len()))
    }

    pub fn in_use(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_use
            .len()
    }
}

/// A port taken from the pool until dropped.
pub struct PortLease {
    port: u16,
    pool: Option<PortPool>,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            let mut s = pool.inner.lock().unwrap_or_else(|p| p.into_inner());
            s.in_use.remove(&self.port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_rotate_and_are_returned() {
        let pool = PortPool::new((100, 102));
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        let c = pool.lease().unwrap();
        assert_eq!((a.port(), b.port(), c.port()), (100, 101, 102));
        assert!(pool.lease().is_err());
        drop(b);
        assert_eq!(pool.lease().unwrap().port(), 101);
        assert_eq!(pool.in_use(), 2);
    }

    #[test]
    fn zero_range_means_os_chosen_ports() {
        let pool = PortPool::new((0, 0));
        assert_eq!(pool.lease().unwrap().port(), 0);
        assert_eq!(pool.in_use(), 0);
    }
}
