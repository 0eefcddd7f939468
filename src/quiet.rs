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
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// The task is inside [`Quiet::poll`].
    inside: AtomicBool,
    /// A wake came while inside.
    woken: AtomicBool,
    /// The task's own waker, for wakes from outside.
    task: AtomicWaker,
}

impl Wake for State {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.inside.load(Ordering::SeqCst) {
            self.woken.store(true, Ordering::SeqCst);
        } else {
            self.task.wake();
        }
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
            state.woken.store(false, Ordering::SeqCst);
            state.inside.store(true, Ordering::SeqCst);
            let polled = poll(&mut inner);
            state.inside.store(false, Ordering::SeqCst);
            if polled.is_ready() || !state.woken.load(Ordering::SeqCst) {
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
}
