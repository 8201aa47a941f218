//! Per-connection and per-connector limits: the frame-rate token bucket, and admission of
//! new connections by a cap per source address and a cap in total.
//!
//! Admission hands out a guard that gives the slot back when the connection ends, however it
//! ends.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use tokio::time::Instant;

/// A token bucket: `rate` frames per second, bursts up to `burst`.
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket {
            tokens: burst as f64,
            last: Instant::now(),
            rate: rate as f64,
            burst: burst.max(1) as f64,
        }
    }

    /// Takes one token; false if none is left (the frame is over the rate).
    pub fn take(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true; // 0 = unlimited
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts open connections per source address and in total.
#[derive(Default)]
pub(crate) struct Admission {
    per_ip: DashMap<IpAddr, usize>,
    total: AtomicUsize,
}

/// A connection's slot; released on drop.
pub(crate) struct Admitted {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.admission.per_ip.entry(self.ip)
        {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

impl Admission {
    /// Takes a slot for a connection from `ip`, or says which cap it is over (0 = no cap).
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_per_ip: usize,
        max_total: usize,
    ) -> Result<Admitted, &'static str> {
        if max_total > 0 && self.total.load(Ordering::Relaxed) >= max_total {
            return Err("this connector is at its connection limit");
        }
        let mut count = self.per_ip.entry(ip).or_insert(0);
        if max_per_ip > 0 && *count >= max_per_ip {
            return Err("too many connections from your address");
        }
        *count += 1;
        drop(count);
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            admission: self.clone(),
            ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_caps_per_address_and_gives_slots_back() {
        let a = Arc::new(Admission::default());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        let one = a.admit(ip, 2, 3).unwrap();
        let _two = a.admit(ip, 2, 3).unwrap();
        assert!(a.admit(ip, 2, 3).is_err());
        let _three = a.admit(other, 2, 3).unwrap();
        assert!(a.admit(other, 2, 3).is_err(), "total cap");
        drop(one);
        assert!(a.admit(ip, 2, 3).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 5);
        assert_eq!((0..20).filter(|_| b.take()).count(), 5);
        tokio::time::advance(std::time::Duration::from_millis(500)).await;
        assert_eq!((0..20).filter(|_| b.take()).count(), 5);
    }
}
