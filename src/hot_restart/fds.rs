//! Passing file descriptors between processes over a Unix stream socket (`SCM_RIGHTS`).
//!
//! This is the only module of the crate that passes descriptors. It needs no `unsafe`:
//! `rustix` wraps `sendmsg`/`recvmsg` and their control messages in a safe API that
//! hands received descriptors back as [`OwnedFd`]s, so the crate keeps
//! `#![forbid(unsafe_code)]`.
//!
//! Wire form: descriptors travel in batches of at most [`MAX_FDS_PER_MESSAGE`]; each
//! batch is one data byte (the batch size) carrying the batch as ancillary data. The
//! receiver reads exactly one byte per batch, so a batch is never merged with the bytes
//! of the next protocol message.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};

/// Descriptors per batch: below the kernel's per-message limit (`SCM_MAX_FD`, 253).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 200;

/// Sends `fds` (duplicates appear in the peer; ours stay open).
pub(crate) fn send_fds(socket: &UnixStream, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    for batch in fds.chunks(MAX_FDS_PER_MESSAGE) {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(batch.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(batch)) {
            return Err(io::Error::other("control message buffer too small"));
        }
        let count = [batch.len() as u8];
        loop {
            match sendmsg(
                socket,
                &[IoSlice::new(&count)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(1) => break,
                Ok(_) => return Err(io::Error::other("short write while passing sockets")),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Receives exactly `count` descriptors sent by [`send_fds`] (close-on-exec).
pub(crate) fn recv_fds(socket: &UnixStream, count: usize) -> io::Result<Vec<OwnedFd>> {
    let mut received = Vec::with_capacity(count);
    let mut space =
        vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    while received.len() < count {
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut announced = [0u8; 1];
        let msg = loop {
            match recvmsg(
                socket,
                &mut [IoSliceMut::new(&mut announced)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(msg) => break msg,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if msg.bytes == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let truncated = msg.flags.contains(ReturnFlags::CTRUNC);
        let before = received.len();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                received.extend(fds);
            }
        }
        let got = received.len() - before;
        if truncated || got != usize::from(announced[0]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "expected a batch of {} sockets, received {got}",
                    announced[0]
                ),
            ));
        }
        if received.len() > count {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("expected {count} sockets, received more"),
            ));
        }
    }
    Ok(received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    #[test]
    fn descriptors_cross_in_batches_and_stay_usable() {
        let (a, b) = UnixStream::pair().unwrap();
        let listeners: Vec<std::net::TcpListener> = (0..MAX_FDS_PER_MESSAGE + 3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|l| l.as_fd()).collect();
        let sender = std::thread::scope(|s| {
            let h = s.spawn(|| send_fds(&a, &fds));
            let got = recv_fds(&b, listeners.len()).unwrap();
            h.join().unwrap().unwrap();
            got
        });
        assert_eq!(sender.len(), listeners.len());
        let last = std::net::TcpListener::from(sender.into_iter().last().unwrap());
        let addr = listeners.last().unwrap().local_addr().unwrap();
        assert_eq!(last.local_addr().unwrap(), addr);
        // The received socket is the same socket: a connection to it is accepted there.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (mut server, _) = last.accept().unwrap();
        client.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        server.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
    }

    #[test]
    fn a_closed_peer_is_an_error_not_a_hang() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let err = recv_fds(&b, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
