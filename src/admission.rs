//! Admission at accept, before any TLS work: the global connection limit,
//! connections per client address, and new connections per second (global
//! and per address). Past any of them a connection is closed at once and
//! counted by reason; nothing is queued. What admits a connection is a
//! [`Ticket`] that lives exactly as long as the connection (and its session
//! or tunnel), releasing its slots when dropped.
//!
//! An IPv6 client is counted by its /64: one client usually holds a whole
//! /64, and counting single addresses would make the per-address limits
//! meaningless for it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::close::Shed;
use crate::config::Limits;
use crate::names::canonical;
use crate::rate::TokenBucket;

/// Per-address maps are pruned of idle entries past this size, so a flood
/// of distinct addresses cannot grow them without bound.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// The gate every accepted connection passes before any TLS work: shed
/// (and counted) rather than queued when a limit is reached.
pub(crate) struct Admission {
    /// `max_connections`: a permit per open connection, held by its ticket.
    permits: Arc<Semaphore>,
    /// Open connections per address key (IPv6: its /64); shared with every
    /// ticket's slot, which counts itself out when dropped.
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_ip: Option<usize>,
    /// `handshake_rate`, over all clients.
    rate: Mutex<TokenBucket>,
    /// `handshake_rate_per_ip`: one bucket per address key, pruned of full
    /// (idle) buckets when the map grows past `MAX_TRACKED_ADDRESSES`.
    rate_per_ip: Mutex<HashMap<IpAddr, TokenBucket>>,
    per_ip_rate: Option<f64>,
}

/// Admits one connection; dropping it releases the slots.
pub(crate) struct Ticket {
    _permit: OwnedSemaphorePermit,
    _slot: Slot,
}

/// One connection counted against its address.
struct Slot {
    key: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = lock(&self.per_ip);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl Admission {
    pub(crate) fn new(limits: &Limits) -> Self {
        Admission {
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: Arc::default(),
            max_per_ip: limits.max_connections_per_ip,
            rate: Mutex::new(per_second(limits.handshake_rate)),
            rate_per_ip: Mutex::default(),
            per_ip_rate: limits.handshake_rate_per_ip,
        }
    }

    /// Admit a connection from `ip`, or say why not (the metric's reason).
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Ticket, Shed> {
        self.admit_as(ip, true)
    }

    /// Admit a WebSocket stream of an HTTP/2 connection from `ip` as a
    /// connection of its own: the connection caps and the address's rate
    /// apply; the global rate, which paces new TCP connections and TLS
    /// handshakes, does not (so one client's streams never use it up for
    /// everyone else).
    pub(crate) fn admit_stream(&self, ip: IpAddr) -> Result<Ticket, Shed> {
        self.admit_as(ip, false)
    }

    fn admit_as(&self, ip: IpAddr, global_rate: bool) -> Result<Ticket, Shed> {
        let key = key(ip);
        let now = Instant::now();
        if let Some(rate) = self.per_ip_rate {
            let mut buckets = lock(&self.rate_per_ip);
            if buckets.len() >= MAX_TRACKED_ADDRESSES {
                buckets.retain(|_, b| !b.is_full_at(now));
            }
            if !buckets
                .entry(key)
                .or_insert_with(|| per_second(rate))
                .take_at(now)
            {
                return Err(Shed::RatePerIp);
            }
        }
        if global_rate && !lock(&self.rate).take_at(now) {
            return Err(Shed::Rate);
        }
        {
            let mut per_ip = lock(&self.per_ip);
            let n = per_ip.entry(key).or_insert(0);
            if self.max_per_ip.is_some_and(|max| *n >= max) {
                if *n == 0 {
                    per_ip.remove(&key);
                }
                return Err(Shed::PerIp);
            }
            *n += 1;
        }
        // Dropped (giving the address's count back) if the global limit refuses.
        let slot = Slot {
            key,
            per_ip: self.per_ip.clone(),
        };
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Shed::Capacity)?;
        Ok(Ticket {
            _permit: permit,
            _slot: slot,
        })
    }
}

/// IPv4 (and IPv4-mapped) as is; IPv6 by its /64.
fn key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// `rate` new connections a second, one second's worth of burst.
fn per_second(rate: f64) -> TokenBucket {
    TokenBucket::new(rate, rate)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_ip: usize, rate: f64, rate_per_ip: f64) -> Limits {
        let mut l = crate::Config::load(
            crate::ConfigSource::Text(crate::config::EMBEDDED_DEFAULT),
            Some(HashMap::new()),
        )
        .unwrap()
        .limits;
        l.max_connections = max;
        l.max_connections_per_ip = Some(per_ip);
        l.handshake_rate = rate;
        l.handshake_rate_per_ip = Some(rate_per_ip);
        l
    }

    #[tokio::test(start_paused = true)]
    async fn each_limit_refuses_with_its_reason_and_tickets_give_back() {
        let a = Admission::new(&limits(3, 2, 1000.0, 1000.0));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let (t1, t2) = (a.admit(ip).unwrap(), a.admit(ip).unwrap());
        assert_eq!(a.admit(ip).err().map(Shed::label), Some("per_ip"));
        let t3 = a.admit("192.0.2.2".parse().unwrap()).unwrap();
        assert_eq!(
            a.admit("192.0.2.3".parse().unwrap()).err().map(Shed::label),
            Some("capacity")
        );
        drop(t1);
        let _t4 = a.admit(ip).unwrap();
        drop((t2, t3));
        assert!(lock(&a.per_ip).get(&ip).is_some_and(|n| *n == 1));

        let a = Admission::new(&limits(100, 100, 1000.0, 3.0));
        let tickets: Vec<_> = (0..3).map(|_| a.admit(ip).unwrap()).collect();
        assert_eq!(a.admit(ip).err().map(Shed::label), Some("rate_per_ip"));
        // The same /64 is the same client.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _ = (
            a.admit(v6("2001:db8::1")),
            a.admit(v6("2001:db8::2")),
            a.admit(v6("2001:db8::3")),
        );
        assert_eq!(
            a.admit(v6("2001:db8::ffff")).err().map(Shed::label),
            Some("rate_per_ip")
        );
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        assert!(a.admit(ip).is_ok());
        drop(tickets);

        let a = Admission::new(&limits(100, 100, 2.0, 100.0));
        let _ok = (
            a.admit(v6("198.51.100.1")).unwrap(),
            a.admit(v6("198.51.100.2")).unwrap(),
        );
        assert_eq!(
            a.admit(v6("198.51.100.3")).err().map(Shed::label),
            Some("rate")
        );
    }
}
