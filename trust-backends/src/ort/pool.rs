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
        SessionPool { free: Mutex::new(sessions), returned: Condvar::new(), size }
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
                return PooledSession { pool: self, session: Some(s) };
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
            self.pool.free.lock().unwrap_or_else(|e| e.into_inner()).push(s);
            self.pool.returned.notify_one();
        }
    }
}
