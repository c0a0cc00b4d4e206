//! Admission limits beyond the node's connection cap (which is the `Semaphore` in
//! [`crate::state`]): streams per subject, new streams per second, publishes per second.
//!
//! A subject is the token's `sub` when auth is on, else the client's IP address: the
//! socket's peer, or the right-most `X-Forwarded-For` hop that is not a trusted proxy when
//! the peer is one (`SSEGATE_TRUSTED_PROXIES`); an untrusted peer cannot choose its IP.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use http::HeaderMap;

/// An address range, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = ip
            .trim()
            .parse()
            .map_err(|_| format!("not an IP address: {ip:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or(format!("bad prefix in {s:?}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let p = u32::from(self.prefix);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
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

/// A token bucket: `rate` per second, bursts up to one second's worth.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Takes one token, or says how many seconds until one is there.
    pub fn take(&self) -> Result<(), u64> {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let refill = now.duration_since(s.1).as_secs_f64() * self.rate;
        s.0 = (s.0 + refill).min(self.rate);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - s.0) / self.rate).ceil().max(1.0) as u64)
        }
    }
}

/// Streams per subject.
#[derive(Debug, Default)]
pub struct SubjectCounts {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl SubjectCounts {
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
}
