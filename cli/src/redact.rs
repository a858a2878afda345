//! The log's writer: every line goes to stderr through
//! `concord_server::logging::redact_line`, so that no token is written, whatever logged it.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;

/// Makes one [`Line`] per log event.
pub(crate) struct Redacting;

impl<'a> MakeWriter<'a> for Redacting {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::new())
    }
}

/// One event's text (the formatter writes an event whole), written to stderr redacted once
/// it is complete.
pub(crate) struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let clean = concord_server::logging::redact_line(&text);
        let _ = io::stderr().lock().write_all(clean.as_bytes());
    }
}
