//! The real `concord` binary as a child process, for tests that kill it: built from
//! `cli/src/main.rs` as `concord-e2e` (see tests/Cargo.toml), started on `127.0.0.1:0`
//! over a data folder the test owns. Included by path from `crash.rs` and `storage.rs`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a start may take before the test gives up (a bound, not an expectation).
const START_BOUND: Duration = Duration::from_secs(60);

/// The path of the binary under test.
pub fn path() -> &'static str {
    env!("CARGO_BIN_EXE_concord-e2e")
}

/// A running `concord` process.
pub struct Binary {
    /// `None` once handed to [`Binary::terminate`].
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stderr: Stderr,
}

/// A child's stderr, collected by a thread until the pipe closes.
#[derive(Clone)]
struct Stderr {
    /// What arrived so far, and a signal for each arrival.
    text: Arc<(Mutex<String>, Condvar)>,
    /// Receives once the pipe closed (the process exited).
    closed: Arc<Mutex<mpsc::Receiver<()>>>,
}

impl Stderr {
    /// Collects `pipe` on a thread.
    fn collect(mut pipe: impl Read + Send + 'static) -> Stderr {
        let text = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let (closed, on_close) = mpsc::channel();
        let into = Arc::clone(&text);
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                into.0
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
                into.1.notify_all();
            }
            let _ = closed.send(());
        });
        Stderr {
            text,
            closed: Arc::new(Mutex::new(on_close)),
        }
    }

    /// Everything so far.
    fn now(&self) -> String {
        self.text.0.lock().unwrap().clone()
    }

    /// Waits until `needle` has arrived `times` times, at most `bound`; true if it did.
    fn wait_for(&self, needle: &str, times: usize, bound: Duration) -> bool {
        let (text, arrived) = &*self.text;
        let (_text, waited) = arrived
            .wait_timeout_while(text.lock().unwrap(), bound, |text| {
                text.matches(needle).count() < times
            })
            .unwrap();
        !waited.timed_out()
    }

    /// Everything, once the pipe closed (the process has exited, so that is at once; the
    /// bound only guards against a grandchild holding the pipe).
    fn all(&self) -> String {
        let _ = self
            .closed
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10));
        self.now()
    }
}

/// How a start ended when the server did not come up.
#[derive(Debug)]
pub struct Failed {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

impl Binary {
    /// Starts the server over `data` with extra flags; panics (with its stderr) unless it
    /// prints its listening line.
    pub fn start(data: &Path, flags: &[&str]) -> Binary {
        match Self::try_start(data, flags) {
            Ok(binary) => binary,
            Err(failed) => panic!(
                "concord did not start ({}); stderr:\n{}",
                failed.status, failed.stderr
            ),
        }
    }

    /// Starts the server; `Err` with its exit status and stderr if it exits instead of
    /// listening.
    pub fn try_start(data: &Path, flags: &[&str]) -> Result<Binary, Failed> {
        Self::try_start_logging(data, flags, "concord_server=warn")
    }

    /// Starts the server with `RUST_LOG` set to `filter`, as [`Binary::start`] does.
    pub fn start_logging(data: &Path, flags: &[&str], filter: &str) -> Binary {
        match Self::try_start_logging(data, flags, filter) {
            Ok(binary) => binary,
            Err(failed) => panic!(
                "concord did not start ({}); stderr:\n{}",
                failed.status, failed.stderr
            ),
        }
    }

    fn try_start_logging(data: &Path, flags: &[&str], filter: &str) -> Result<Binary, Failed> {
        let mut child = Command::new(path())
            .args(["--addr", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(flags)
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the concord-e2e binary runs");
        let stderr = Stderr::collect(child.stderr.take().expect("piped"));
        // The listening line, read on a thread so that a server that never prints it
        // cannot hang the test.
        let stdout = child.stdout.take().expect("piped");
        let (found, addr) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match lines.read_line(&mut line) {
                    Ok(0) | Err(_) => {
                        let _ = found.send(None);
                        return;
                    }
                    Ok(_) => {
                        if let Some(addr) = line.trim().strip_prefix("concord listening on http://")
                        {
                            let _ = found.send(Some(addr.to_owned()));
                            break;
                        }
                    }
                }
            }
            // Keep draining, so that the server never blocks on a full pipe.
            let _ = std::io::copy(&mut lines, &mut std::io::sink());
        });
        match addr.recv_timeout(START_BOUND) {
            Ok(Some(addr)) => Ok(Binary {
                child: Some(child),
                addr,
                stderr,
            }),
            Ok(None) => {
                let status = child.wait().expect("wait for concord");
                Err(Failed {
                    status,
                    stderr: stderr.all(),
                })
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "concord printed no listening line within {START_BOUND:?}; stderr:\n{}",
                    stderr.now()
                );
            }
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.now()
    }

    /// Waits until the server has logged `needle` `times` times (start it with a
    /// `RUST_LOG` filter that lets the line through), at most `bound`; true if it did.
    pub fn wait_for_log(&self, needle: &str, times: usize, bound: Duration) -> bool {
        self.stderr.wait_for(needle, times, bound)
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps the process; returns its
    /// stderr.
    pub fn kill(mut self) -> String {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL concord");
        child.wait().expect("reap concord");
        self.stderr.all()
    }

    /// Sends SIGTERM and waits for the process to exit, at most `bound`: its exit status
    /// and stderr, or `None` if it did not exit in time (it is then killed).
    pub async fn terminate(mut self, bound: Duration) -> Option<(ExitStatus, String)> {
        let mut child = self.child.take().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on a child this test spawned and has not reaped (it is owned
        // here, so nobody waited for it), with a valid signal number.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM could not be sent");
        let (done, exited) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let _ = done.send(child.wait());
        });
        match tokio::time::timeout(bound, exited).await {
            Ok(Ok(status)) => Some((status.expect("wait for concord"), self.stderr.all())),
            _ => {
                // SAFETY: as above; the waiting thread reaps it once it dies.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                None
            }
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
