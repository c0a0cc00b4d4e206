//! Admission limits beyond the node's stream cap (which is the `Semaphore` in
//! [`crate::state`]): streams per subject, new streams per second, publishes per second,
//! the connections a listener holds ([`ConnectionSlots`], shared out of the open-files
//! limit by [`FileBudget`]) and the bytes of request bodies in flight ([`BodyBudget`]).
//!
//! A subject is the token's `sub` when auth is on, else the client's IP address: the
//! socket's peer, or the right-most `X-Forwarded-For` hop that is not a trusted proxy when
//! the peer is one (`SSEGATE_TRUSTED_PROXIES`); an untrusted peer cannot choose its IP.
//!
//! # Layout
//!
//! - `mod.rs`: proxies and client IPs, subjects, rate limits, request body bytes.
//! - `files`: the open-files limit, how it is shared out, the listeners' connection
//!   slots and the descriptor table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use governor::clock::Clock;
use http::HeaderMap;
use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod files;

pub use files::*;

/// Not an address range.
#[derive(Debug, thiserror::Error)]
pub enum CidrError {
    /// The address part is not an IP address.
    #[error("not an IP address: {0:?}")]
    Address(String),
    /// The prefix is not a number of bits the address has.
    #[error("bad prefix in {0:?}")]
    Prefix(String),
}

/// An address range, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(IpNet);

impl Cidr {
    /// `addr/prefix` or `addr` (a single address); blanks around either part are
    /// ignored, and host bits after the prefix are allowed (`10.1.2.3/8` is `10.0.0.0/8`).
    pub fn parse(s: &str) -> Result<Self, CidrError> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| CidrError::Address(ip.to_owned()))?;
        let net = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .and_then(|p| IpNet::new(addr, p).ok())
                .ok_or_else(|| CidrError::Prefix(s.to_owned()))?,
            None => IpNet::from(addr),
        };
        Ok(Self(net))
    }

    /// Whether `ip` is in the range; an IPv4-mapped IPv6 address counts as its IPv4 one.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

/// The client address a limit applies to.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    if !trusted.iter().any(|c| c.contains(peer)) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|h| h.trim().parse().ok())
        .collect();
    hops.iter()
        .rev()
        .find(|ip| !trusted.iter().any(|c| c.contains(**ip)))
        .copied()
        .unwrap_or(peer)
}

/// A token bucket: `rate` per second, bursts up to one second's worth (GCRA, which is
/// the same thing, kept in one atomic).
#[derive(Debug)]
pub struct RateLimiter(
    governor::RateLimiter<
        governor::state::NotKeyed,
        governor::state::InMemoryState,
        governor::clock::MonotonicClock,
    >,
);

impl RateLimiter {
    /// `per_second` tokens a second, as many at once after a quiet second; 0 counts as 1
    /// (a node with no limit has no limiter at all).
    pub fn new(per_second: u32) -> Self {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        Self(governor::RateLimiter::direct_with_clock(
            governor::Quota::per_second(rate),
            governor::clock::MonotonicClock,
        ))
    }

    /// Takes one token, or says how many seconds until one is there.
    pub fn take(&self) -> Result<(), u64> {
        self.0.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(self.0.clock().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

/// Streams per subject.
#[derive(Debug, Default)]
pub struct SubjectCounts {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl SubjectCounts {
    /// At most `max` streams per subject; 0: no limit (and nothing is counted).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `subject`, or `None` at its limit (0 = no limit).
    pub fn enter(self: &Arc<Self>, subject: String) -> Option<SubjectGuard> {
        if self.max == 0 {
            return Some(SubjectGuard {
                counts: None,
                subject,
            });
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(subject.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SubjectGuard {
            counts: Some(self.clone()),
            subject,
        })
    }
}

/// Holds a subject's slot while its stream is open.
#[derive(Debug)]
pub struct SubjectGuard {
    counts: Option<Arc<SubjectCounts>>,
    subject: String,
}

impl Drop for SubjectGuard {
    fn drop(&mut self) {
        let Some(counts) = &self.counts else { return };
        let mut open = counts.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.subject);
            }
        }
    }
}

/// The bytes of request bodies a node holds at once, node-wide: a body takes its share
/// before it is read (its `Content-Length`, or chunk by chunk when it has none) and gives
/// it back when the request has been answered.
#[derive(Debug)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
}

impl BodyBudget {
    /// A budget of `max` bytes (capped at tokio's semaphore limit, `usize::MAX >> 3`).
    pub fn new(max: usize) -> Self {
        Self {
            bytes: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// `n` bytes of the budget, or `None` when they are not free now.
    pub fn try_take(&self, n: usize) -> Option<BodyBytes> {
        let n = u32::try_from(n).ok()?;
        let permit = self.bytes.clone().try_acquire_many_owned(n).ok()?;
        Some(BodyBytes(permit))
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }
}

/// A body's share of the [`BodyBudget`], given back on drop.
#[derive(Debug)]
pub struct BodyBytes(OwnedSemaphorePermit);

impl BodyBytes {
    /// Takes `n` more bytes, or says `false` when they are not free now.
    pub fn grow(&mut self, budget: &BodyBudget, n: usize) -> bool {
        match budget.try_take(n) {
            Some(more) => {
                self.0.merge(more.0);
                true
            }
            None => false,
        }
    }

    /// How many bytes this share is.
    pub fn len(&self) -> usize {
        self.0.num_permits()
    }

    /// Whether this share is zero bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(
            Cidr::parse("127.0.0.1")
                .unwrap()
                .contains(ip("::ffff:127.0.0.1"))
        );
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!Cidr::parse("fd00::/8").unwrap().contains(ip("fe80::1")));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4, 10.0.0.7".parse().unwrap());
        assert_eq!(client_ip(ip("10.0.0.1"), &h, &trusted), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("5.6.7.8"), &h, &trusted), ip("5.6.7.8"));
        h.insert("x-forwarded-for", "9.9.9.9, 1.2.3.4".parse().unwrap());
        assert_eq!(
            client_ip(ip("10.0.0.1"), &h, &trusted),
            ip("1.2.3.4"),
            "right-most untrusted hop"
        );
    }

    #[test]
    fn subject_slots_are_counted_and_released() {
        let counts = SubjectCounts::new(2);
        let a = counts.enter("a".into()).unwrap();
        let _b = counts.enter("a".into()).unwrap();
        assert!(counts.enter("a".into()).is_none());
        assert!(counts.enter("other".into()).is_some());
        drop(a);
        assert!(counts.enter("a".into()).is_some());
    }

    #[test]
    fn the_bucket_allows_a_second_of_burst_then_refuses() {
        let r = RateLimiter::new(5);
        for _ in 0..5 {
            assert!(r.take().is_ok());
        }
        assert_eq!(r.take(), Err(1));
    }

    #[test]
    fn body_bytes_are_taken_and_given_back() {
        let budget = BodyBudget::new(100);
        let mut a = budget.try_take(60).unwrap();
        assert!(budget.try_take(41).is_none(), "past the budget");
        assert!(a.grow(&budget, 40));
        assert_eq!((a.len(), budget.available()), (100, 0));
        assert!(!a.grow(&budget, 1));
        drop(a);
        assert_eq!(budget.available(), 100);
        assert!(budget.try_take(0).is_some_and(|b| b.is_empty()));
    }
}
