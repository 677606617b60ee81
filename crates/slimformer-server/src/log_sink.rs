//! Log lines that never hold up serving: a request's log line goes into a bounded
//! queue and one thread writes the queue out. When the output stalls (a log shipper
//! that stopped reading a pipe), the queue fills and new lines are dropped and
//! counted (`slimformer_log_lines_dropped_total`) instead of blocking a runtime
//! worker on a full pipe.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// Lines waiting to be written at most: a burst of a couple of thousand requests
/// rides out a slow sink, in well under a MB.
pub const QUEUE_LINES: usize = 2048;

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because the output did not keep up, since the process started.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Where the lines go.
#[derive(Debug, Clone, Copy)]
pub enum Output {
    Stdout,
    Stderr,
}

/// A log writer: each formatted event is one `write` call (as `tracing_subscriber`'s
/// formatter makes it), queued whole, or dropped whole when the queue is full.
#[derive(Clone)]
pub struct NonBlocking {
    queue: SyncSender<Vec<u8>>,
}

/// Drains the queue when dropped (at the end of `main`), waiting at most a second
/// for a stalled output so that the process still exits.
pub struct FlushGuard {
    queue: Option<SyncSender<Vec<u8>>>,
    done: Receiver<()>,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        // Closing the last sender ends the writer once it has written the queue.
        self.queue.take();
        let _ = self.done.recv_timeout(Duration::from_secs(1));
    }
}

/// A non-blocking writer to `output`, with the guard that flushes it at exit.
pub fn non_blocking(output: Output) -> (NonBlocking, FlushGuard) {
    let (queue, lines) = mpsc::sync_channel::<Vec<u8>>(QUEUE_LINES);
    let (finished, done) = mpsc::channel();
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            for line in lines {
                // A failed write (a closed pipe) loses the line, as a full queue does.
                let written = match output {
                    Output::Stdout => std::io::stdout().lock().write_all(&line),
                    Output::Stderr => std::io::stderr().lock().write_all(&line),
                };
                if written.is_err() {
                    DROPPED.fetch_add(1, Ordering::Relaxed);
                }
            }
            let _ = finished.send(());
        })
        .expect("spawn the log writer thread");
    let guard = FlushGuard {
        queue: Some(queue.clone()),
        done,
    };
    (NonBlocking { queue }, guard)
}

impl Write for NonBlocking {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.queue.try_send(buf.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        // A writer whose thread is gone: every line is refused at once.
        let (queue, lines) = mpsc::sync_channel::<Vec<u8>>(2);
        drop(lines);
        let mut writer = NonBlocking { queue };
        let before = dropped_lines();
        for _ in 0..5 {
            assert_eq!(writer.write(b"line\n").unwrap(), 5);
        }
        assert!(dropped_lines() - before >= 5);

        // A queue nobody drains: two lines fit, the rest are dropped without waiting.
        let (queue, _lines) = mpsc::sync_channel::<Vec<u8>>(2);
        let mut writer = NonBlocking { queue };
        let before = dropped_lines();
        for _ in 0..10 {
            writer.write_all(b"line\n").unwrap();
        }
        assert!(dropped_lines() - before >= 8);
    }
}
