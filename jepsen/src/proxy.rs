//! Network partitions between real processes on one machine: every directed node-to-node link
//! goes through a TCP proxy the suite owns.
//!
//! runnel's node transport gives every ordered pair of nodes its own connection (the dialer
//! writes, the acceptor reads), and a voter dials its peers at the addresses its own
//! `controller.quorum.voters` names. The suite writes each node a configuration in which every
//! other voter's address is the port of a [`Link`] from that node to that voter, so cutting a
//! link silences exactly one direction between two nodes, the way a dropped route would.
//!
//! A cut is silent, not a reset: bytes the dialer writes into a cut link are read and thrown
//! away, nothing comes back, and a connection opened while the link is cut is accepted into
//! the same black hole. The dialer only learns of it through its own timeouts, as with packets
//! dropped on a real network. When the link heals, every connection that lost bytes is closed
//! (a frame stream with a hole in it cannot be resumed), and the dialer reconnects through the
//! healed link.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// One connection through a link: the dialer's side and, unless it was accepted while the link
/// was cut, the target's side.
struct Conn {
    client: TcpStream,
    server: Option<TcpStream>,
    state: Arc<ConnState>,
}

struct ConnState {
    /// Set once bytes were dropped: the connection must be closed at the next heal.
    tainted: AtomicBool,
    /// Set when a pump ended: the connection is gone.
    ended: AtomicBool,
}

struct Shared {
    target: SocketAddr,
    /// The port the link listens on (given up while the target is down).
    port: u16,
    cut: AtomicBool,
    /// The target's process is down: the link does not listen either, so dialers get the
    /// connection refused they would get from the target itself.
    down: AtomicBool,
    stopped: AtomicBool,
    conns: Mutex<Vec<Conn>>,
    /// Bytes thrown away while cut (for the run's summary).
    dropped_bytes: AtomicU64,
}

/// A proxy for one direction between two nodes, listening on a port of its own.
pub struct Link {
    /// The node that dials through this link.
    pub from: i32,
    /// The node it reaches.
    pub to: i32,
    shared: Arc<Shared>,
}

impl Link {
    /// Listen on an ephemeral 127.0.0.1 port and forward every connection to `target`.
    pub fn start(from: i32, to: i32, target: SocketAddr) -> io::Result<Link> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            target,
            port,
            cut: AtomicBool::new(false),
            down: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            dropped_bytes: AtomicU64::new(0),
        });
        let s = shared.clone();
        thread::Builder::new().name(format!("link-{from}-{to}")).spawn(move || accept_loop(listener, s))?;
        Ok(Link { from, to, shared })
    }

    /// The address `from` dials to reach `to`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.shared.port)
    }

    /// Drop everything sent through this link from now on.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        for c in self.shared.conns.lock().expect("conns lock").iter() {
            c.state.tainted.store(true, Ordering::SeqCst);
        }
    }

    /// Forward again; connections that lost bytes are closed so that the dialer starts afresh.
    pub fn heal(&self) {
        let mut conns = self.shared.conns.lock().expect("conns lock");
        self.shared.cut.store(false, Ordering::SeqCst);
        conns.retain(|c| {
            if c.state.tainted.load(Ordering::SeqCst) {
                close(c);
                false
            } else {
                true
            }
        });
    }

    /// The target's process died (`true`) or is back (`false`). While it is down the link stops
    /// listening and closes its connections, so a dialer sees what it would see dialing the
    /// dead node directly: a closed connection, then refused connects.
    pub fn set_target_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            for c in self.shared.conns.lock().expect("conns lock").drain(..) {
                close(&c);
            }
        }
    }

    /// Whether the link is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Bytes thrown away so far.
    pub fn dropped_bytes(&self) -> u64 {
        self.shared.dropped_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The accept loop polls, and sees this within a few milliseconds.
        self.shared.stopped.store(true, Ordering::SeqCst);
        for c in self.shared.conns.lock().expect("conns lock").drain(..) {
            close(&c);
        }
    }
}

fn close(c: &Conn) {
    let _ = c.client.shutdown(Shutdown::Both);
    if let Some(s) = &c.server {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// Accept connections, polling (a blocked `accept` could not give the port up while the target
/// is down): the listener is dropped while `down` and bound again on the same port after.
fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    loop {
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let down = shared.down.load(Ordering::SeqCst);
        if down {
            listener = None;
        } else if listener.is_none() {
            listener = TcpListener::bind(("127.0.0.1", shared.port)).ok();
        }
        let Some(l) = listener.as_ref() else {
            thread::sleep(Duration::from_millis(2));
            continue;
        };
        if l.set_nonblocking(true).is_err() {
            continue;
        }
        let client = match l.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(_) => continue,
        };
        let _ = client.set_nonblocking(false);
        let _ = client.set_nodelay(true);
        let cut = shared.cut.load(Ordering::SeqCst);
        // While cut, the connection is accepted into the black hole: no connect to the target.
        let server = if cut {
            None
        } else {
            match TcpStream::connect_timeout(&shared.target, Duration::from_secs(1)) {
                Ok(s) => Some(s),
                // The target is down: refuse, as the target itself would.
                Err(_) => continue,
            }
        };
        if let Some(s) = &server {
            let _ = s.set_nodelay(true);
        }
        let state = Arc::new(ConnState { tainted: AtomicBool::new(cut), ended: AtomicBool::new(false) });
        let (Ok(client_read), Ok(client_write)) = (client.try_clone(), client.try_clone()) else { continue };
        match server.as_ref().map(|s| s.try_clone()) {
            Some(Ok(server_read)) => {
                let Some(Ok(server_write)) = server.as_ref().map(|s| s.try_clone()) else { continue };
                spawn_pump(client_read, Some(server_write), shared.clone(), state.clone());
                spawn_pump(server_read, Some(client_write), shared.clone(), state.clone());
            }
            Some(Err(_)) => continue,
            None => {
                drop(client_write);
                spawn_pump(client_read, None, shared.clone(), state.clone())
            }
        }
        let mut conns = shared.conns.lock().expect("conns lock");
        // Forget connections that are gone.
        conns.retain(|c| !c.state.ended.load(Ordering::SeqCst));
        conns.push(Conn { client, server, state });
    }
}

/// Copy `from` into `to` until either side closes; while the link is cut (or for a connection
/// born cut, always) the bytes are read and dropped instead.
fn spawn_pump(mut from: TcpStream, mut to: Option<TcpStream>, shared: Arc<Shared>, state: Arc<ConnState>) {
    let _ = thread::Builder::new().name("link-pump".into()).spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if shared.cut.load(Ordering::SeqCst) || state.tainted.load(Ordering::SeqCst) {
                state.tainted.store(true, Ordering::SeqCst);
                shared.dropped_bytes.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            let forwarded = to.as_mut().is_some_and(|t| t.write_all(&buf[..n]).is_ok());
            if !forwarded {
                break;
            }
        }
        state.ended.store(true, Ordering::SeqCst);
        let _ = from.shutdown(Shutdown::Both);
        if let Some(t) = to {
            let _ = t.shutdown(Shutdown::Both);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || {
                    let mut s = s;
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn a_cut_link_drops_silently_and_a_heal_closes_what_lost_bytes() {
        // Proves the three behaviours the nemesis relies on: forwarding, silent loss while cut
        // (the dialer's write succeeds, no answer, no reset), and a close at heal for the
        // connection that lost bytes, after which a new connection forwards again.
        let link = Link::start(1, 2, echo_server()).expect("link");
        let addr: SocketAddr = link.address().parse().expect("addr");
        let mut a = TcpStream::connect(addr).expect("connect");
        a.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        assert_eq!(roundtrip(&mut a, b"hello").expect("forwarded"), b"hello");

        link.cut();
        assert!(link.is_cut());
        let err = roundtrip(&mut a, b"lost").expect_err("nothing comes back while cut");
        assert!(matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{err:?}");
        let mut born_cut = TcpStream::connect(addr).expect("a connection opened while cut is accepted");
        born_cut.set_read_timeout(Some(Duration::from_millis(300))).expect("timeout");
        assert!(roundtrip(&mut born_cut, b"void").is_err());
        // The pumps count what they dropped; wait for both writes to be read.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while link.dropped_bytes() < 8 {
            assert!(std::time::Instant::now() < deadline, "dropped {} bytes", link.dropped_bytes());
            thread::sleep(Duration::from_millis(10));
        }

        link.heal();
        a.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut rest = Vec::new();
        assert_eq!(a.read_to_end(&mut rest).expect("closed, not reset"), 0, "the tainted connection is closed at heal");
        let mut b = TcpStream::connect(addr).expect("connect after heal");
        b.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        assert_eq!(roundtrip(&mut b, b"again").expect("forwarded after heal"), b"again");

        // A dead target: the link closes its connections and refuses new ones, then listens
        // again on the same port once the target is back.
        link.set_target_down(true);
        let mut rest = Vec::new();
        assert_eq!(b.read_to_end(&mut rest).expect("closed"), 0, "connections are closed when the target dies");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match TcpStream::connect(addr) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                _ => assert!(std::time::Instant::now() < deadline, "the link still accepts while its target is down"),
            }
            thread::sleep(Duration::from_millis(10));
        }
        link.set_target_down(false);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut c = loop {
            match TcpStream::connect(addr) {
                Ok(c) => break c,
                Err(_) => assert!(std::time::Instant::now() < deadline, "the link does not listen again"),
            }
            thread::sleep(Duration::from_millis(10));
        };
        c.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        assert_eq!(roundtrip(&mut c, b"back").expect("forwarded once the target is back"), b"back");
    }
}
