//! [`Proxy`]: a TCP proxy that cuts and holds connections on demand.

use std::net::SocketAddr;

/// A TCP proxy in front of the server, to cut connections and hold new ones: a network
/// drop on demand, for reconnect tests.
pub struct Proxy {
    addr: SocketAddr,
    paused: tokio::sync::watch::Sender<bool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy on a free port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let (paused, mut resumed) = tokio::sync::watch::channel(false);
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = std::sync::Arc::clone(&links);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                // While paused, a connection waits here, unanswered.
                if resumed.wait_for(|paused| !*paused).await.is_err() {
                    return;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().unwrap().push(link.abort_handle());
            }
        });
        Proxy {
            addr,
            paused,
            links,
            accept,
        }
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Holds new connections unanswered until [`Proxy::resume`].
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Lets held and new connections through.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Drops every open connection, as a network failure would.
    pub fn cut(&self) {
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
