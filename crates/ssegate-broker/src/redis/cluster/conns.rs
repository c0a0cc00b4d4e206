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

/// A node's connection, open or being opened, with the generation that tells it from the
/// connections before and after it.
enum Slot<C> {
    Ready(u64, C),
    Opening(u64, Opening<C>),
}

/// The connections by address (`host:port`).
pub(crate) struct Conns<C> {
    slots: Mutex<(u64, HashMap<String, Slot<C>>)>,
}

impl<C> std::fmt::Debug for Conns<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slots = lock(&self.slots);
        f.debug_map()
            .entries(slots.1.iter().map(|(addr, slot)| {
                let state = match slot {
                    Slot::Ready(..) => "ready",
                    Slot::Opening(..) => "opening",
                };
                (addr.clone(), state)
            }))
            .finish()
    }
}

impl<C: Clone + Send + Sync + 'static> Conns<C> {
    pub(crate) fn new() -> Self {
        Self {
            slots: Mutex::new((0, HashMap::new())),
        }
    }

    /// The connection to `addr` and its generation (for [`Conns::forget`]); when there is
    /// none and none is being opened, `open`'s. The connect runs as a task of its own, so
    /// a caller that gives up (its deadline passed) does not stall it for the next one.
    pub(crate) async fn get<F>(
        &self,
        addr: &str,
        open: impl FnOnce() -> F,
    ) -> Result<(C, u64), String>
    where
        F: Future<Output = Result<C, String>> + Send + 'static,
    {
        let (generation, opening) = {
            let mut guard = lock(&self.slots);
            let (next, slots) = &mut *guard;
            match slots.get(addr) {
                Some(Slot::Ready(g, c)) => return Ok((c.clone(), *g)),
                Some(Slot::Opening(g, f)) => (*g, f.clone()),
                None => {
                    *next += 1;
                    let task = tokio::spawn(open());
                    let f = async move {
                        task.await
                            .unwrap_or_else(|e| Err(format!("the connect task failed: {e}")))
                    }
                    .boxed()
                    .shared();
                    slots.insert(addr.to_owned(), Slot::Opening(*next, f.clone()));
                    (*next, f)
                }
            }
        };
        let opened = opening.await;
        let mut guard = lock(&self.slots);
        let slots = &mut guard.1;
        // Only the attempt still on record is settled: a refresh may have dropped it.
        if matches!(slots.get(addr), Some(Slot::Opening(g, _)) if *g == generation) {
            match &opened {
                Ok(c) => slots.insert(addr.to_owned(), Slot::Ready(generation, c.clone())),
                Err(_) => slots.remove(addr),
            };
        }
        opened.map(|c| (c, generation))
    }

    /// Drops `addr`'s connection of `generation` (it broke, or timed out): the next
    /// caller opens another. A newer connection, or a connect in flight, is left alone,
    /// so the commands that all saw the old connection break open one between them.
    pub(crate) fn forget(&self, addr: &str, generation: u64) {
        let mut guard = lock(&self.slots);
        if matches!(guard.1.get(addr), Some(Slot::Ready(g, _)) if *g == generation) {
            guard.1.remove(addr);
        }
    }

    /// Keeps only the connections to addresses `keep` accepts.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.slots).1.retain(|addr, _| keep(addr));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.slots).1.len()
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
        opener_after(addr, opened, async {})
    }

    /// [`opener`], connecting once `ready` is done.
    fn opener_after(
        addr: std::net::SocketAddr,
        opened: &Arc<AtomicUsize>,
        ready: impl Future<Output = ()> + Send + 'static,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<Arc<TcpStream>, String>> {
        let opened = opened.clone();
        move || {
            opened.fetch_add(1, Ordering::SeqCst);
            async move {
                ready.await;
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
            let (c, generation) = c.as_ref().unwrap();
            assert_eq!(c.local_addr().unwrap(), peer);
            assert_eq!(*generation, 1);
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
        let mut generations = Vec::new();
        for a in ["a:1", "b:2", "c:3"] {
            generations.push(conns.get(a, opener(addr, &opened)).await.unwrap().1);
        }
        conns.forget("a:1", generations[0]);
        conns.retain(|a| a != "b:2");
        assert_eq!(conns.len(), 1);
        let (_, newer) = conns.get("a:1", opener(addr, &opened)).await.unwrap();
        assert_eq!(opened.load(Ordering::SeqCst), 4);
        // A late failure of the old connection leaves the new one alone.
        conns.forget("a:1", generations[0]);
        assert_eq!(
            conns.get("a:1", opener(addr, &opened)).await.unwrap().1,
            newer
        );
        assert_eq!(opened.load(Ordering::SeqCst), 4);
    }

    /// A caller that gives up while the connect is in flight (its deadline passed) does
    /// not stall it: the connect goes on as its own task and the next caller gets it.
    #[tokio::test]
    async fn a_connect_goes_on_when_its_caller_gives_up() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Conns::new();
        let opened = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = opener_after(addr, &opened, async {
            let _ = wait.await;
        });
        {
            let first = conns.get("a:1", slow);
            tokio::pin!(first);
            assert!(first.as_mut().now_or_never().is_none());
        } // dropped: the caller gave up
        release.send(()).unwrap();
        listener.accept().await.unwrap();
        conns.get("a:1", opener(addr, &opened)).await.unwrap();
        assert_eq!(opened.load(Ordering::SeqCst), 1, "one connect in all");
    }
}
