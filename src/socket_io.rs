//! Socket reads with one `read` call per wake-up, and single writes from a pooled
//! buffer.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Reads what the socket has into `buf` with one `read` call. After a short read (fewer
/// bytes than `buf` had room for) the socket is drained, so tokio is told to wait for
/// the next readiness event instead of the caller finding out with a second `read` that
/// returns `EAGAIN`. Data that arrives in between raises a new event, which tokio keeps
/// (it clears only the readiness it saw before the read).
pub(crate) fn read_once(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let mut read = None;
    let result = stream.try_io(Interest::READABLE, || {
        let room = buf.capacity() - buf.len();
        let n = stream.try_read_buf(buf)?;
        read = Some(n);
        if n > 0 && n < room {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match (result, read) {
        // The read succeeded: an error now is the `WouldBlock` made above. It is a bare
        // error kind, which owns nothing, so it is forgotten rather than dropped: that
        // skips a call to `io::Error`'s drop (about 17 instructions, twice a request at
        // pipeline 1) and leaks nothing.
        (Err(made), Some(n)) => {
            std::mem::forget(made);
            Ok(n)
        }
        (result, _) => result,
    }
}

/// Writes what `buf` holds with one `send` call and removes the bytes written; a
/// buffer left empty goes back to the worker's pool ([`crate::buffer_pool`]). Returns how
/// many bytes were written: 0 when `buf` is empty or the socket would block.
///
/// The call is `rustix`'s, a system call made in place: the C library's `send` is a
/// thread cancellation point, and entering and leaving that costs about 90
/// instructions per call (callgrind), as much as the rest of this function. Readiness
/// is kept by tokio as with `try_write` (a `WouldBlock` clears it).
pub(crate) fn write_once(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    if buf.is_empty() {
        return Ok(0);
    }
    let sent = stream.try_io(Interest::WRITABLE, || {
        // No SIGPIPE when the peer has gone: the error comes back instead.
        rustix::net::send(stream, buf, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
    });
    match sent {
        Ok(n) => {
            if n == buf.len() {
                // All written: the buffer keeps its whole room (a small reply buffer
                // goes back to the pool as one).
                buf.clear();
            } else {
                buf.advance(n);
                crate::buffer_pool::after_partial_write(buf);
            }
            crate::buffer_pool::release(buf);
            Ok(n)
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn a_short_read_returns_the_data_and_waits_for_more() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::with_capacity(1024);

        client.write_all(b"hello").await.unwrap();
        server.readable().await.unwrap();
        assert_eq!(read_once(&server, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..], b"hello");
        // Drained: the next call does not read, it reports that nothing is ready.
        let again = read_once(&server, &mut buf).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::WouldBlock);

        // New data raises readiness again and is read.
        client.write_all(b" world").await.unwrap();
        server.readable().await.unwrap();
        assert_eq!(read_once(&server, &mut buf).unwrap(), 6);
        assert_eq!(&buf[..], b"hello world");

        // A full buffer keeps the readiness: more may be waiting.
        let mut small = BytesMut::with_capacity(4);
        client.write_all(b"abcdefgh").await.unwrap();
        server.readable().await.unwrap();
        let n = read_once(&server, &mut small).unwrap();
        assert_eq!(n, small.capacity().min(8));
        // End of stream reads as 0.
        drop(client);
        let mut rest = BytesMut::with_capacity(64);
        loop {
            server.readable().await.unwrap();
            match read_once(&server, &mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(small.len() + rest.len(), 8);
    }

    #[tokio::test]
    async fn a_write_removes_what_it_wrote_and_an_emptied_buffer_is_released() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut buf = BytesMut::with_capacity(64);
        assert_eq!(
            write_once(&client, &mut buf).unwrap(),
            0,
            "nothing to write"
        );
        buf.extend_from_slice(b"reply");
        client.writable().await.unwrap();
        assert_eq!(write_once(&client, &mut buf).unwrap(), 5);
        assert!(buf.is_empty());
        assert_eq!(
            buf.capacity(),
            0,
            "the emptied buffer went back to the pool"
        );
        let mut got = BytesMut::with_capacity(16);
        server.readable().await.unwrap();
        read_once(&server, &mut got).unwrap();
        assert_eq!(&got[..], b"reply");
    }
}
