//! A checkout pool of ONNX Runtime sessions.
//!
//! `ort::session::Session::run` takes `&mut self`, so a session serves one call at a time. The
//! pool holds N sessions of the same model; a caller checks one out (waiting while all are busy)
//! and the guard returns it on drop. The pool is `Send + Sync`, so the models built on it are too.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex};

use ::ort::session::Session;

pub(crate) struct SessionPool {
    free: Mutex<Vec<Session>>,
    returned: Condvar,
    size: usize,
}

impl SessionPool {
    pub(crate) fn new(sessions: Vec<Session>) -> Self {
        let size = sessions.len();
        assert!(size > 0, "a session pool needs at least one session");
        SessionPool {
            free: Mutex::new(sessions),
            returned: Condvar::new(),
            size,
        }
    }

    /// Number of sessions.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Takes a free session, blocking until one is returned if all are in use. Holders never
    /// await while holding a session, so this cannot deadlock.
    pub(crate) fn checkout(&self) -> PooledSession<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(s) = free.pop() {
                return PooledSession {
                    pool: self,
                    session: Some(s),
                };
            }
            free = self.returned.wait(free).unwrap_or_else(|e| e.into_inner());
        }
    }
}

pub(crate) struct PooledSession<'p> {
    pool: &'p SessionPool,
    session: Option<Session>,
}

impl Deref for PooledSession<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        self.session.as_ref().expect("session present until drop")
    }
}

impl DerefMut for PooledSession<'_> {
    fn deref_mut(&mut self) -> &mut Session {
        self.session.as_mut().expect("session present until drop")
    }
}

impl Drop for PooledSession<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool
                .free
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(s);
            self.pool.returned.notify_one();
        }
    }
}

/// Runs `f` over `items` on up to `workers` scoped threads; results keep the order of `items`.
pub(crate) fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    workers: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let workers = workers.min(items.len());
    if workers <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k >= items.len() {
                        break;
                    }
                    let r = f(&items[k]);
                    *slots[k].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .expect("every item ran")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parallel_map;

    #[test]
    fn parallel_map_keeps_order() {
        let items: Vec<usize> = (0..37).collect();
        for workers in [1, 2, 5, 100] {
            assert_eq!(
                parallel_map(&items, workers, |x| x * 2),
                items.iter().map(|x| x * 2).collect::<Vec<_>>()
            );
        }
        assert!(parallel_map(&Vec::<u8>::new(), 4, |x| *x).is_empty());
    }
}
