//! UDP for the shard: socket buffers sized for fan-out bursts, and outgoing datagrams sent in
//! batches with one `sendmmsg(2)` per batch instead of one `sendto(2)` per datagram.

use std::io::IoSlice;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    MsgFlags, MultiHeaders, SockaddrStorage, getsockopt, sendmmsg, setsockopt, sockopt,
};
use str0m::net::DatagramSend;
use tracing::{debug, warn};

/// Kernel buffer asked for per media socket. One keyframe fanned out to hundreds of receivers
/// keeps the loop busy for milliseconds while feedback keeps arriving; the default (≈200 KiB)
/// overflows then and drops publishers' packets with the rest.
pub const SOCKET_BUFFER_BYTES: usize = 16 << 20;
/// Below this the node will drop datagrams under load; worth a warning.
const SOCKET_BUFFER_WARN_BYTES: usize = 4 << 20;
/// Datagrams per `sendmmsg` call.
pub const SEND_BATCH: usize = 64;

/// Enlarges the socket's receive and send buffers. `SO_*BUFFORCE` passes the
/// `net.core.{r,w}mem_max` cap where the process may (CAP_NET_ADMIN); otherwise the cap
/// applies. Returns the sizes the kernel granted (which it reports doubled, as it counts its
/// bookkeeping).
pub fn enlarge_buffers(socket: &StdUdpSocket) -> (usize, usize) {
    if setsockopt(socket, sockopt::RcvBufForce, &SOCKET_BUFFER_BYTES).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &SOCKET_BUFFER_BYTES);
    }
    if setsockopt(socket, sockopt::SndBufForce, &SOCKET_BUFFER_BYTES).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &SOCKET_BUFFER_BYTES);
    }
    let receive = getsockopt(socket, sockopt::RcvBuf).unwrap_or(0);
    let send = getsockopt(socket, sockopt::SndBuf).unwrap_or(0);
    // The kernel reports twice what it grants for data.
    if receive / 2 < SOCKET_BUFFER_WARN_BYTES {
        warn!(
            receive,
            "small UDP receive buffer: raise net.core.rmem_max (sysctl) to at least {} or run \
             with CAP_NET_ADMIN, or expect drops in large meetings",
            SOCKET_BUFFER_BYTES
        );
    }
    (receive, send)
}

/// One socket's queued datagrams, addresses apart so that `sendmmsg` takes them as they are.
#[derive(Default)]
struct Queue {
    addresses: Vec<Option<SockaddrStorage>>,
    contents: Vec<DatagramSend>,
}

/// Outgoing datagrams queued per socket until [`SendBatch::flush`].
pub struct SendBatch {
    headers: MultiHeaders<SockaddrStorage>,
    queues: Vec<Queue>,
    /// Datagrams the kernel would not take (full send buffer) since the last call to
    /// [`SendBatch::take_dropped`].
    dropped: u64,
}

impl SendBatch {
    pub fn new(sockets: usize) -> Self {
        Self {
            headers: MultiHeaders::preallocate(SEND_BATCH, None),
            queues: (0..sockets).map(|_| Queue::default()).collect(),
            dropped: 0,
        }
    }

    /// Queues a datagram on socket `index`; sends the socket's queue once it is a full batch.
    pub fn push(
        &mut self,
        sockets: &[impl AsRawFd],
        index: usize,
        destination: SocketAddr,
        contents: DatagramSend,
    ) {
        let Some(queue) = self.queues.get_mut(index) else {
            return;
        };
        queue
            .addresses
            .push(Some(SockaddrStorage::from(destination)));
        queue.contents.push(contents);
        if queue.contents.len() >= SEND_BATCH {
            self.flush_one(sockets, index);
        }
    }

    /// Sends everything queued.
    pub fn flush(&mut self, sockets: &[impl AsRawFd]) {
        for index in 0..self.queues.len() {
            self.flush_one(sockets, index);
        }
    }

    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    fn flush_one(&mut self, sockets: &[impl AsRawFd], index: usize) {
        let (Some(queue), Some(socket)) = (self.queues.get_mut(index), sockets.get(index)) else {
            return;
        };
        let fd = socket.as_raw_fd();
        let total = queue.contents.len();
        let slices: Vec<[IoSlice<'_>; 1]> = queue
            .contents
            .iter()
            .map(|contents| [IoSlice::new(contents)])
            .collect();
        let mut next = 0;
        while next < total {
            let end = total.min(next + SEND_BATCH);
            let sent = sendmmsg(
                fd,
                &mut self.headers,
                &slices[next..end],
                &queue.addresses[next..end],
                [],
                MsgFlags::MSG_DONTWAIT,
            )
            .map(Iterator::count);
            match sent {
                Ok(0) => {
                    debug!("sendmmsg sent nothing; dropping one datagram");
                    self.dropped += 1;
                    next += 1;
                }
                Ok(n) => next += n,
                // A full send buffer drops the rest, as the network would.
                Err(Errno::EAGAIN) => {
                    self.dropped += (total - next) as u64;
                    break;
                }
                // An error that belongs to the first datagram (an ICMP error reported late, an
                // unreachable address): skip that one, keep the others.
                Err(e) => {
                    debug!("udp send: {e}");
                    self.dropped += 1;
                    next += 1;
                }
            }
        }
        queue.addresses.clear();
        queue.contents.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_reach_every_destination_in_order() {
        let sender = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let receivers: Vec<StdUdpSocket> = (0..3)
            .map(|_| StdUdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for r in &receivers {
            r.set_read_timeout(Some(std::time::Duration::from_secs(2)))
                .unwrap();
        }
        let sockets = [sender];
        let mut batch = SendBatch::new(1);
        // More than one batch: the queue is sent in several calls.
        let total = SEND_BATCH * 2 + 5;
        for i in 0..total {
            let to = receivers[i % 3].local_addr().unwrap();
            batch.push(&sockets, 0, to, vec![i as u8; 100].into());
        }
        batch.flush(&sockets);
        assert_eq!(batch.take_dropped(), 0);
        let mut buf = [0u8; 200];
        for (r_index, r) in receivers.iter().enumerate() {
            let mut expected = (r_index..total).step_by(3);
            for want in expected.by_ref() {
                let (len, from) = r.recv_from(&mut buf).unwrap();
                assert_eq!(len, 100);
                assert_eq!(from, sockets[0].local_addr().unwrap());
                assert_eq!(buf[0], want as u8);
            }
        }
    }

    #[test]
    fn an_unsendable_datagram_does_not_stop_the_others() {
        let sender = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let receiver = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let sockets = [sender];
        let mut batch = SendBatch::new(1);
        // An IPv6 destination on an IPv4 socket fails with EAFNOSUPPORT.
        batch.push(&sockets, 0, "[::1]:9".parse().unwrap(), vec![1].into());
        batch.push(&sockets, 0, receiver.local_addr().unwrap(), vec![2].into());
        batch.flush(&sockets);
        assert_eq!(batch.take_dropped(), 1);
        let mut buf = [0u8; 8];
        let (len, _) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], &[2]);
    }

    #[test]
    fn buffers_are_enlarged_up_to_the_system_cap() {
        let cap = |name: &str| -> usize {
            std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let socket = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let (receive, send) = enlarge_buffers(&socket);
        // Without CAP_NET_ADMIN the sysctl cap applies; either way far above the default.
        assert!(
            receive >= SOCKET_BUFFER_BYTES.min(cap("rmem_max")),
            "{receive}"
        );
        assert!(send >= SOCKET_BUFFER_BYTES.min(cap("wmem_max")), "{send}");
    }
}
