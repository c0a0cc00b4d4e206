//! One shared connection per Redis node, opened once however many callers want it.
//!
//! # Bounding rule
//!
//! **At most one connection, open or being opened, per address.** A burst of requests to a
//! new or restarted primary (hundreds of publishes after a failover) would otherwise open
//! one connection each and keep one: every caller that finds a connect in flight waits for
//! that one (single-flight). A failed connect is forgotten, so the next caller tries again.
//! Addresses that leave the slot map are dropped ([`Conns::retain`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::lock;

type Opening<C> = Shared<BoxFuture<'static, Result<C, String>>>;

/// A node's connection, open or being opened.
enum Slot<C> {
    Ready(C),
    Opening(Opening<C>),
}

/// The connections by address (`host:port`).
pub(crate) struct Conns<C> {
    slots: Mutex<HashMap<String, Slot<C>>>,
}

impl<C> std::fmt::Debug for Conns<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots = lock(&self.slots);
        f.debug_map()
            .entries(slots.iter().map(|(addr, slot)| {
                let state = match slot {
                    Slot::Ready(_) => "ready",
                    Slot::Opening(_) => "opening",
                };
                (addr.clone(), state)
            }))
            .finish()
    }
}

impl<C: Clone + Send + Sync + 'static> Conns<C> {
    pub(crate) fn new() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The connection to `addr`; when there is none and none is being opened, `open`'s.
    pub(crate) async fn get<F>(&self, addr: &str, open: impl FnOnce() -> F) -> Result<C, String>
    where
        F: Future<Output = Result<C, String>> + Send + 'static,
    {
        let opening = {
            let mut slots = lock(&self.slots);
            match slots.get(addr) {
                Some(Slot::Ready(c)) => return Ok(c.clone()),
                Some(Slot::Opening(f)) => f.clone(),
                None => {
                    let f = open().boxed().shared();
                    slots.insert(addr.to_owned(), Slot::Opening(f.clone()));
                    f
                }
            }
        };
        let opened = opening.clone().await;
        let mut slots = lock(&self.slots);
        // Only the attempt still on record is settled: a refresh or a `forget` may have
        // replaced it meanwhile.
        if let Some(Slot::Opening(f)) = slots.get(addr)
            && f.ptr_eq(&opening)
        {
            match &opened {
                Ok(c) => slots.insert(addr.to_owned(), Slot::Ready(c.clone())),
                Err(_) => slots.remove(addr),
            };
        }
        opened
    }

    /// Drops `addr`'s connection (it broke, or timed out): the next caller opens another.
    pub(crate) fn forget(&self, addr: &str) {
        lock(&self.slots).remove(addr);
    }

    /// Keeps only the connections to addresses `keep` accepts.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.slots).retain(|addr, _| keep(addr));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.slots).len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Opens a real socket to `addr`, counting the attempts.
    fn opener(
        addr: std::net::SocketAddr,
        opened: &Arc<AtomicUsize>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<Arc<TcpStream>, String>> {
        let opened = opened.clone();
        move || {
            opened.fetch_add(1, Ordering::SeqCst);
            async move {
                TcpStream::connect(addr)
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn a_burst_of_callers_opens_one_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Conns::new();
        let opened = Arc::new(AtomicUsize::new(0));
        let callers = (0..50).map(|_| conns.get("a:1", opener(addr, &opened)));
        let got = futures_util::future::join_all(callers).await;
        assert!(got.iter().all(Result::is_ok), "{got:?}");
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        // The one accepted socket is the one every caller holds.
        let (_accepted, peer) = listener.accept().await.unwrap();
        for c in &got {
            assert_eq!(c.as_ref().unwrap().local_addr().unwrap(), peer);
        }
        // And the next caller reuses it.
        conns.get("a:1", opener(addr, &opened)).await.unwrap();
        assert_eq!(opened.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_connect_is_forgotten_and_tried_again() {
        // A port nothing listens on: bound, then closed.
        let addr = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let conns = Conns::new();
        let opened = Arc::new(AtomicUsize::new(0));
        let callers = (0..10).map(|_| conns.get("a:1", opener(addr, &opened)));
        let got = futures_util::future::join_all(callers).await;
        assert!(got.iter().all(Result::is_err), "{got:?}");
        assert_eq!(opened.load(Ordering::SeqCst), 1);
        assert_eq!(conns.len(), 0);
        let again = conns.get("a:1", opener(addr, &opened)).await;
        assert!(again.is_err());
        assert_eq!(opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn forget_and_retain_drop_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Conns::new();
        let opened = Arc::new(AtomicUsize::new(0));
        for a in ["a:1", "b:2", "c:3"] {
            conns.get(a, opener(addr, &opened)).await.unwrap();
        }
        conns.forget("a:1");
        conns.retain(|a| a != "b:2");
        assert_eq!(conns.len(), 1);
        conns.get("a:1", opener(addr, &opened)).await.unwrap();
        assert_eq!(opened.load(Ordering::SeqCst), 4);
    }
}
