//! Server-sent events for streamed chat completions.

use std::io::Write;

use tiny_http::Request;

/// A server-sent-events response written by hand, so that every event leaves at once
/// (tiny_http's own responses buffer the body).
pub struct Sse {
    writer: Box<dyn Write + Send>,
    chunked: bool,
}

impl Sse {
    pub fn start(request: Request) -> std::io::Result<Self> {
        let v = request.http_version();
        let chunked = (v.0, v.1) >= (1, 1);
        let mut writer = request.into_writer();
        write!(
            writer,
            "HTTP/1.{} 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
             Connection: close\r\n{}\r\n",
            u8::from(chunked),
            if chunked {
                "Transfer-Encoding: chunked\r\n"
            } else {
                ""
            }
        )?;
        writer.flush()?;
        Ok(Sse { writer, chunked })
    }

    pub fn send(&mut self, data: &str) -> std::io::Result<()> {
        let event = format!("data: {data}\n\n");
        if self.chunked {
            write!(self.writer, "{:x}\r\n{event}\r\n", event.len())?;
        } else {
            self.writer.write_all(event.as_bytes())?;
        }
        self.writer.flush()
    }

    pub fn end(mut self) {
        if self.chunked {
            let _ = self.writer.write_all(b"0\r\n\r\n");
        }
        let _ = self.writer.flush();
    }
}
