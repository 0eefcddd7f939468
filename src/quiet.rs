//! Polling without waking oneself.
//!
//! A task that wakes itself while it is being polled (one part of a connection handing a
//! chunk to another part polled by the same task: hyper's server feeding a request body that
//! the same task writes to S3, or an S3 connection handing over an answer) is, for tokio's
//! multi-threaded scheduler, a task that yields: it goes to the back of the run queue and
//! an idle worker thread is woken to share the work. That worker finds nothing to do and
//! parks again: a futex or eventfd wake-up and two context switches for nothing, up to once
//! per chunk. [`Quiet`] polls with a waker that holds such wakes back and polls again
//! instead; a wake from anywhere else goes through to the task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// How many times a poll that keeps waking itself is repeated at most before the task
/// yields. It yields sooner when tokio's cooperative budget for this turn is spent: tokio's
/// sockets then wake the task at once, every time, and another poll would only spin.
const REPOLLS: usize = 32;

/// A waker for one task's polls of something it drives itself. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Quiet {
    state: Arc<State>,
    waker: Waker,
}

#[derive(Default)]
struct State {
    gate: Gate<AtomicU8>,
    /// The task's own waker, for wakes from outside.
    task: AtomicWaker,
}

impl Wake for State {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.gate.hold() {
            self.task.wake();
        }
    }
}

/// The three states of a [`Quiet`] waker, in one atomic so that a wake racing the end of a
/// poll is either seen by the poller or passed on to the task, never neither. (Two flags,
/// "inside" and "woken", lose it: the waker reads "inside", the poll ends and finds no
/// wake, then the waker records one nobody reads.)
const OUTSIDE: u8 = 0;
/// Being polled: a wake is held back for the poller.
const INSIDE: u8 = 1;
/// Being polled, and woken meanwhile.
const WOKEN: u8 = 2;

/// An atomic byte: std's in the gateway, loom's in the model-checked test.
trait AtomicByte {
    fn store(&self, value: u8);
    fn swap(&self, value: u8) -> u8;
    fn compare_exchange(&self, current: u8, new: u8) -> Result<u8, u8>;
}

impl AtomicByte for AtomicU8 {
    fn store(&self, value: u8) {
        AtomicU8::store(self, value, Ordering::SeqCst)
    }

    fn swap(&self, value: u8) -> u8 {
        AtomicU8::swap(self, value, Ordering::SeqCst)
    }

    fn compare_exchange(&self, current: u8, new: u8) -> Result<u8, u8> {
        AtomicU8::compare_exchange(self, current, new, Ordering::SeqCst, Ordering::SeqCst)
    }
}

/// Whether the task is inside a poll, and whether it was woken there.
#[derive(Default)]
struct Gate<A> {
    state: A,
}

impl<A: AtomicByte> Gate<A> {
    /// A poll begins.
    fn enter(&self) {
        self.state.store(INSIDE);
    }

    /// A wake: true when it is held for the poller (inside a poll), false when it must go
    /// to the task.
    fn hold(&self) -> bool {
        match self.state.compare_exchange(INSIDE, WOKEN) {
            Ok(_) => true,
            Err(now) => now == WOKEN,
        }
    }

    /// The poll ended: was it woken meanwhile?
    fn leave(&self) -> bool {
        self.state.swap(OUTSIDE) == WOKEN
    }
}

impl Default for Quiet {
    fn default() -> Self {
        let state = Arc::new(State::default());
        Quiet {
            waker: Waker::from(state.clone()),
            state,
        }
    }
}

impl Quiet {
    /// Runs `poll` with this waker; polls again when it was woken meanwhile, while tokio's
    /// budget for this turn lasts (and [`REPOLLS`] times at most). A wake held back from a
    /// poll that ends ready is dropped: whoever gets the result polls again, or is done.
    pub(crate) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut poll: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let state = &self.state;
        state.task.register(cx.waker());
        let mut inner = Context::from_waker(&self.waker);
        for _ in 0..REPOLLS {
            state.gate.enter();
            let polled = poll(&mut inner);
            let woken = state.gate.leave();
            if polled.is_ready() || !woken {
                return polled;
            }
            if !tokio::task::coop::has_budget_remaining() {
                // The task has had its turn: yield, as tokio means it to.
                break;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Forgets the task: a later wake goes nowhere until the next [`Quiet::poll`].
    pub(crate) fn forget(&self) {
        drop(self.state.task.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A task's waker that counts its wakes.
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Task {
        fn woken(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn task() -> (Arc<Task>, Waker) {
        let task = Arc::new(Task::default());
        (task.clone(), Waker::from(task))
    }

    #[test]
    fn a_wake_from_inside_the_poll_polls_again_instead() {
        let (task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let quiet = Quiet::default();
        let mut polls = 0;
        let polled = quiet.poll(&mut cx, |cx| {
            polls += 1;
            if polls == 1 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(polls)
            }
        });
        assert_eq!(polled, Poll::Ready(2));
        assert_eq!(task.woken(), 0);
    }

    #[test]
    fn a_wake_from_outside_reaches_the_task() {
        let (task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let quiet = Quiet::default();
        // The waker a pending poll leaves behind (with a socket, a channel...).
        let mut left_behind = || {
            let mut kept = None;
            let polled: Poll<()> = quiet.poll(&mut cx, |cx| {
                kept = Some(cx.waker().clone());
                Poll::Pending
            });
            assert!(polled.is_pending());
            kept.unwrap()
        };
        left_behind().wake();
        assert_eq!(task.woken(), 1);
        // Forgotten, the task is not woken.
        let kept = left_behind();
        quiet.forget();
        kept.wake();
        assert_eq!(task.woken(), 1);
    }

    /// Polls, through a new [`Quiet`], something that wakes itself every time; returns how
    /// many polls it got and how many times the task was woken.
    fn poll_self_waking() -> (usize, usize) {
        let (task, waker) = task();
        let mut cx = Context::from_waker(&waker);
        let mut polls = 0;
        let polled: Poll<()> = Quiet::default().poll(&mut cx, |cx| {
            polls += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        });
        assert!(polled.is_pending());
        (polls, task.woken())
    }

    #[test]
    fn a_poll_that_keeps_waking_itself_yields() {
        assert_eq!(poll_self_waking(), (REPOLLS, 1));
    }

    #[tokio::test]
    async fn a_task_whose_budget_is_spent_yields_at_once() {
        std::future::poll_fn(|cx| {
            // Spend the task's budget for this turn, as a busy socket would.
            while tokio::task::coop::has_budget_remaining() {
                let spend = std::pin::pin!(tokio::task::coop::consume_budget());
                assert!(spend.poll(cx).is_ready());
            }
            assert_eq!(poll_self_waking(), (1, 1));
            Poll::Ready(())
        })
        .await;
    }

    /// Every interleaving of a wake from another thread with one poll (loom): the wake is
    /// seen by the poller or passed to the task, exactly one of the two.
    #[test]
    fn a_wake_racing_the_end_of_a_poll_is_never_lost() {
        use loom::sync::atomic::AtomicU8 as LoomU8;

        struct Loom(LoomU8);
        impl AtomicByte for Loom {
            fn store(&self, value: u8) {
                self.0.store(value, Ordering::SeqCst)
            }
            fn swap(&self, value: u8) -> u8 {
                self.0.swap(value, Ordering::SeqCst)
            }
            fn compare_exchange(&self, current: u8, new: u8) -> Result<u8, u8> {
                self.0
                    .compare_exchange(current, new, Ordering::SeqCst, Ordering::SeqCst)
            }
        }

        loom::model(|| {
            let gate = loom::sync::Arc::new(Gate {
                state: Loom(LoomU8::new(OUTSIDE)),
            });
            let waker = {
                let gate = gate.clone();
                loom::thread::spawn(move || !gate.hold())
            };
            gate.enter();
            let seen = gate.leave();
            let passed_on = waker.join().unwrap();
            assert!(seen != passed_on, "seen {seen}, passed on {passed_on}");
        });
    }
}
