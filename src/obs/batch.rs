//! Access-log lines gathered in memory and written together by one thread.
//!
//! A line written as its request ends costs a `write` on the worker that served it: 4% of the
//! gateway's CPU at small GETs in `perf` (see `docs/performance.md`). Here a line is copied into a
//! shared buffer instead, and a flusher thread writes what has gathered once the first line
//! of a batch is `every` old, or sooner when the batch reaches [`BATCH`] bytes. The buffer is
//! bounded: past [`MAX_PENDING`] (an output that has stopped taking lines, such as a full
//! pipe) requests wait for it, as they would on a synchronous write. Lines keep their order.
//! [`Batch::flush`] writes what is left; shutdown calls it once requests have drained.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A batch this large is written without waiting for `every`.
const BATCH: usize = 64 * 1024;
/// Lines wait for room past this.
const MAX_PENDING: usize = 4 * 1024 * 1024;

pub(super) struct Batch {
    shared: Arc<Shared>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    /// Held while a batch is taken and written, so batches go out in order.
    out: Mutex<Box<dyn Write + Send>>,
    /// A batch's first line, a full batch, or closing.
    ready: Condvar,
    /// Room again below `MAX_PENDING`.
    drained: Condvar,
    every: Duration,
    closed: AtomicBool,
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic mid-write leaves bytes, not broken invariants: keep logging.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Batch {
    /// Starts the flusher thread for `out`.
    pub(super) fn start(out: Box<dyn Write + Send>, every: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(BATCH)),
            out: Mutex::new(out),
            ready: Condvar::new(),
            drained: Condvar::new(),
            every,
            closed: AtomicBool::new(false),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || shared.run())?
        };
        Ok(Self {
            shared,
            flusher: Mutex::new(Some(flusher)),
        })
    }

    /// Writes what has gathered to the current output, then sends later lines to `out`.
    pub(super) fn replace(&self, out: Box<dyn Write + Send>) {
        let s = &*self.shared;
        let mut current = lock(&s.out);
        s.write_pending_to(&mut **current);
        *current = out;
    }

    /// Adds a whole line (with its newline).
    pub(super) fn push(&self, line: &[u8]) {
        let s = &*self.shared;
        let mut pending = lock(&s.pending);
        while pending.len() >= MAX_PENDING && !s.closed.load(Ordering::Relaxed) {
            pending = s
                .drained
                .wait(pending)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let before = pending.len();
        pending.extend_from_slice(line);
        if s.closed.load(Ordering::Relaxed) {
            drop(pending);
            s.write_pending();
        } else if before == 0 || (before < BATCH && pending.len() >= BATCH) {
            // The flusher has something new to do only at a batch's first line (it then waits
            // `every`) and when the batch fills.
            s.ready.notify_one();
        }
    }

    /// Writes every line pushed so far and stops the flusher; later lines are written as they
    /// come.
    pub(super) fn flush(&self) {
        self.shared.closed.store(true, Ordering::Relaxed);
        {
            // Under the lock, so the flusher cannot miss the wake-up between its check and its
            // wait.
            let _pending = lock(&self.shared.pending);
            self.shared.ready.notify_all();
            self.shared.drained.notify_all();
        }
        if let Some(flusher) = lock(&self.flusher).take() {
            let _ = flusher.join();
        }
        self.shared.write_pending();
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}

impl Shared {
    fn run(&self) {
        loop {
            {
                let mut pending = lock(&self.pending);
                while pending.is_empty() && !self.closed.load(Ordering::Relaxed) {
                    pending = self
                        .ready
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                let deadline = Instant::now() + self.every;
                while pending.len() < BATCH && !self.closed.load(Ordering::Relaxed) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    pending = self
                        .ready
                        .wait_timeout(pending, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
            if self.closed.load(Ordering::Relaxed) {
                return;
            }
            self.write_pending();
        }
    }

    /// Takes what has gathered and writes it.
    fn write_pending(&self) {
        let mut out = lock(&self.out);
        self.write_pending_to(&mut **out);
    }

    fn write_pending_to(&self, out: &mut dyn Write) {
        let batch = {
            let mut pending = lock(&self.pending);
            if pending.is_empty() {
                return;
            }
            std::mem::replace(&mut *pending, Vec::with_capacity(BATCH))
        };
        self.drained.notify_all();
        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
            tracing::warn!(error = %e, lines = batch.iter().filter(|&&b| b == b'\n').count(), "could not write the access log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn written(sink: &Sink) -> String {
        String::from_utf8(lock(&sink.0).clone()).unwrap()
    }

    #[test]
    fn lines_arrive_after_every_and_in_order() {
        let sink = Sink::default();
        let batch = Batch::start(Box::new(sink.clone()), Duration::from_millis(20)).unwrap();
        batch.push(b"one\n");
        batch.push(b"two\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !written(&sink).ends_with("two\n") {
            assert!(Instant::now() < deadline, "the batch was never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(written(&sink), "one\ntwo\n");
        batch.push(b"three\n");
        drop(batch);
        assert_eq!(written(&sink), "one\ntwo\nthree\n");
    }

    #[test]
    fn a_replaced_output_gets_only_the_lines_after_it() {
        let (old, new) = (Sink::default(), Sink::default());
        // An hour: nothing is written but by the replace and the flush.
        let batch = Batch::start(Box::new(old.clone()), Duration::from_secs(3600)).unwrap();
        batch.push(b"a\n");
        batch.push(b"b\n");
        batch.replace(Box::new(new.clone()));
        batch.push(b"c\n");
        batch.flush();
        assert_eq!(written(&old), "a\nb\n");
        assert_eq!(written(&new), "c\n");
    }

    #[test]
    fn a_full_batch_goes_out_without_waiting() {
        let sink = Sink::default();
        // An hour: only a full batch (or the flush) can write.
        let batch = Batch::start(Box::new(sink.clone()), Duration::from_secs(3600)).unwrap();
        let line = [b'x'; 1023]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        for _ in 0..BATCH / line.len() {
            batch.push(&line);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while written(&sink).len() < BATCH {
            assert!(Instant::now() < deadline, "a full batch waited");
            std::thread::sleep(Duration::from_millis(5));
        }
        batch.flush();
        assert_eq!(written(&sink).len(), BATCH);
    }

    #[test]
    fn lines_pushed_from_many_threads_are_each_written_once() {
        let sink = Sink::default();
        let batch =
            Arc::new(Batch::start(Box::new(sink.clone()), Duration::from_millis(1)).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let batch = batch.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        batch.push(format!("{t} {i}\n").as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        batch.flush();
        let text = written(&sink);
        let mut seen: Vec<&str> = text.lines().collect();
        assert_eq!(seen.len(), 20_000);
        // Each thread's lines in the order it pushed them.
        for t in 0..4 {
            let mine: Vec<usize> = seen
                .iter()
                .filter_map(|l| l.strip_prefix(&format!("{t} ")))
                .map(|i| i.parse().unwrap())
                .collect();
            assert_eq!(mine, (0..5000).collect::<Vec<_>>());
        }
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 20_000);
    }
}
