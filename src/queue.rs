//! Namespaces waiting to be synced after their objects changed. A namespace is in the queue at
//! most once however often it changes, is handed to one worker at a time (a change during its
//! sync queues it again for afterwards), and is taken first-in first-out, so a namespace whose
//! objects change all the time cannot starve the others. The daemon's workers take from it; the
//! watches put into it. It holds names only.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
struct State {
    pending: VecDeque<Arc<str>>,
    queued: HashSet<Arc<str>>,
    running: HashSet<Arc<str>>,
    /// Changed while running: queued again when its sync ends.
    again: HashSet<Arc<str>>,
    closed: bool,
}

/// The queue (see the module doc).
#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    wake: Notify,
}

impl WorkQueue {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks for a sync of `namespace`.
    pub fn push(&self, namespace: &str) {
        let mut state = self.state();
        if state.closed || state.queued.contains(namespace) {
            return;
        }
        if state.running.contains(namespace) {
            state.again.insert(Arc::from(namespace));
            return;
        }
        let name: Arc<str> = Arc::from(namespace);
        state.queued.insert(name.clone());
        state.pending.push_back(name);
        drop(state);
        self.wake.notify_one();
    }

    /// The next namespace to sync (marked running until [`WorkQueue::done`]), or `None` once
    /// the queue is closed.
    pub async fn next(&self) -> Option<Arc<str>> {
        loop {
            {
                let mut state = self.state();
                if state.closed {
                    return None;
                }
                if let Some(name) = state.pending.pop_front() {
                    state.queued.remove(&name);
                    state.running.insert(name.clone());
                    let more = !state.pending.is_empty();
                    drop(state);
                    // One wake-up may stand for many pushes: pass it on while work is left.
                    if more {
                        self.wake.notify_one();
                    }
                    return Some(name);
                }
            }
            self.wake.notified().await;
        }
    }

    /// Ends the sync of `namespace`; queues it again if it changed meanwhile.
    pub fn done(&self, namespace: &str) {
        let again = {
            let mut state = self.state();
            state.running.remove(namespace);
            state.again.remove(namespace)
        };
        if again {
            self.push(namespace);
        }
    }

    /// Takes nothing more: waiting workers get `None`.
    pub fn close(&self) {
        self.state().closed = true;
        self.wake.notify_waiters();
    }

    /// How many namespaces wait.
    pub fn len(&self) -> usize {
        self.state().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_namespace_waits_once_however_often_it_changes_and_comes_out_in_order() {
        let q = WorkQueue::default();
        for ns in ["a", "b", "a", "c", "a"] {
            q.push(ns);
        }
        assert_eq!(q.len(), 3);
        let mut order = Vec::new();
        for _ in 0..3 {
            let ns = q.next().await.expect("work");
            order.push(ns.to_string());
            q.done(&ns);
        }
        assert_eq!(order, ["a", "b", "c"]);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_change_during_a_sync_queues_the_namespace_again_afterwards_not_twice_at_once() {
        let q = WorkQueue::default();
        q.push("a");
        let running = q.next().await.expect("work");
        q.push("a");
        assert!(q.is_empty(), "never handed out twice at once");
        q.done(&running);
        assert_eq!(q.next().await.as_deref(), Some("a"));
    }

    #[tokio::test]
    async fn every_waiting_worker_is_woken_by_a_burst_and_none_after_close() {
        let q = Arc::new(WorkQueue::default());
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move {
                    let mut took = 0;
                    while let Some(ns) = q.next().await {
                        took += 1;
                        tokio::task::yield_now().await;
                        q.done(&ns);
                    }
                    took
                })
            })
            .collect();
        for i in 0..100 {
            q.push(&format!("ns-{i}"));
        }
        while !q.is_empty() {
            tokio::task::yield_now().await;
        }
        q.close();
        let mut total = 0;
        for w in workers {
            total += w.await.expect("worker");
        }
        assert_eq!(total, 100);
    }
}
