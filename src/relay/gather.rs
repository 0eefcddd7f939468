//! Gathering a download's small frames from S3 in the kernel, not in the gateway.
//!
//! Some S3 servers send a download in small writes (s3s-fs: one 4 KiB file read at a time,
//! each sent as it comes). When the gateway relays faster than S3 sends, every frame arrives
//! alone: the gateway wakes, reads 4 KiB, writes 4 KiB to the client and sleeps again, once
//! per frame. Joining the frames that are already there cannot help (hyper already writes all
//! it holds in one vectored write): there is only ever one.
//!
//! So while a download's body is read, the socket's receive low-water mark (`SO_RCVLOWAT`) is
//! raised to the smaller of what the body still lacks and `backend.download_gather`: the
//! kernel wakes the gateway once that much has come. The mark never reaches past the body's
//! end (its length is known, so the last bytes are never held), the first bytes are never
//! held (only after a frame has gone on), and no byte is held longer than [`WAIT`]: then the
//! mark drops to one byte, and the kernel reports what has come. Plain TCP only: over TLS the
//! socket's bytes are not the body's.

use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::Sleep;

/// The longest a received byte waits in the kernel for more to join it.
pub(super) const WAIT: Duration = Duration::from_millis(1);

/// The mark of one connection to S3.
pub(super) struct Gather {
    fd: RawFd,
    /// `backend.download_gather`.
    most: usize,
    /// The mark set now.
    mark: usize,
    /// A frame of this body has gone on: from now on its bytes may be gathered.
    flowing: bool,
    /// Made at the first wait, then reset for each one.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the wait since the last frame.
    armed: bool,
    /// It has run out: take what comes.
    expired: bool,
}

impl Gather {
    /// For the TCP socket `fd`, which the caller keeps open while this lives.
    pub(super) fn new(fd: RawFd, most: usize) -> Self {
        Gather {
            fd,
            most,
            mark: 1,
            flowing: false,
            timer: None,
            armed: false,
            expired: false,
        }
    }

    /// A frame of the body came: the next wait starts afresh.
    pub(super) fn frame(&mut self) {
        self.flowing = true;
        self.armed = false;
        self.expired = false;
    }

    /// The body waits for S3 and lacks `remaining` more bytes (`None`: unknown): raise the
    /// mark, or drop it if the wait has run out. Registers `cx` with the timer.
    pub(super) fn hold(&mut self, cx: &mut Context<'_>, remaining: Option<u64>) {
        let want = remaining.map_or(1, |r| {
            usize::try_from(r).unwrap_or(usize::MAX).min(self.most)
        });
        if !self.flowing || self.expired || want <= 1 {
            return self.set(1);
        }
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WAIT)));
        if !self.armed {
            timer.as_mut().reset(tokio::time::Instant::now() + WAIT);
            self.armed = true;
        }
        if timer.as_mut().poll(cx).is_ready() {
            self.expired = true;
            return self.set(1);
        }
        self.set(want);
    }

    /// The body has ended (or the connection goes back to the pool): the next answer's head
    /// must wake the reader at its first byte.
    pub(super) fn reset(&mut self) {
        self.flowing = false;
        self.armed = false;
        self.expired = false;
        self.set(1);
    }

    fn set(&mut self, mark: usize) {
        if self.mark != mark {
            // A failure leaves the old mark, which the next call sets again; the wait bounds
            // any byte held meanwhile.
            if set_rcvlowat(self.fd, mark).is_ok() {
                self.mark = mark;
            }
        }
    }
}

/// `setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, mark)`. No crate this project uses wraps this
/// option (socket2, rustix and nix do not), hence the one call to libc.
#[allow(unsafe_code)]
fn set_rcvlowat(fd: RawFd, mark: usize) -> std::io::Result<()> {
    let value = libc::c_int::try_from(mark).unwrap_or(libc::c_int::MAX);
    // SAFETY: the pointer and length describe `value`, a live c_int, for the whole call; the
    // kernel only reads it. An fd that is not a socket is an error, not undefined behaviour.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const value).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
