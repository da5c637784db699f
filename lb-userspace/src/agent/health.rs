//! Health of the gateway nodes: the probes (HTTP GET with an expected status, or a TCP
//! connect) and the rise/fall state machine that turns probe results into healthy or not.
//!
//! The state machine is pure ([`Health::record`]); the probe tasks only produce results
//! and send them to the agent's state task, which owns every [`Health`].
use std::{net::SocketAddr, time::Duration};

use serde::Serialize;
use tokio::sync::mpsc;

use super::{
    config::{GatewayConfig, ProbeKind},
    http::{self, Call},
};

/// Rise/fall state of one gateway.
///
/// A gateway starts unhealthy and the *first* result decides at once (so an agent that
/// starts next to healthy gateways puts them in the ring after one probe, not after
/// `rise`); from then on `rise` consecutive successes make it healthy and `fall`
/// consecutive failures make it unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub healthy: bool,
    /// Whether any probe has completed.
    pub probed: bool,
    /// Consecutive results that disagree with `healthy`.
    pub streak: u32,
    /// The last failure's reason, cleared on success.
    pub last_error: Option<String>,
    #[serde(skip)]
    rise: u32,
    #[serde(skip)]
    fall: u32,
}

impl Health {
    /// Unprobed and unhealthy.
    pub fn new(rise: u32, fall: u32) -> Health {
        Health {
            healthy: false,
            probed: false,
            streak: 0,
            last_error: None,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Keeps the state but takes new rise/fall counts (on reload).
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Records one probe result; returns whether `healthy` changed.
    pub fn record(&mut self, result: &Result<(), String>) -> bool {
        let ok = result.is_ok();
        self.last_error = result.as_ref().err().cloned();
        if !self.probed {
            self.probed = true;
            self.streak = 0;
            let changed = self.healthy != ok;
            self.healthy = ok;
            return changed;
        }
        if ok == self.healthy {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if ok { self.rise } else { self.fall };
        if self.streak >= needed {
            self.healthy = ok;
            self.streak = 0;
            true
        } else {
            false
        }
    }
}

/// One probe result on its way to the state task.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    /// The gateway's name.
    pub gateway: String,
    /// Generation of the probe set (results of probes from before a reload are dropped).
    pub generation: u64,
    /// Ok, or why not.
    pub result: Result<(), String>,
}

/// Probes `gw` once.
pub async fn probe_once(gw: &GatewayConfig) -> Result<(), String> {
    let addr = SocketAddr::from((gw.address, gw.probe.port));
    probe_addr(addr, &gw.probe.kind, gw.probe.timeout).await
}

/// Probes `addr` once with `kind` within `timeout`.
pub async fn probe_addr(
    addr: SocketAddr,
    kind: &ProbeKind,
    timeout: Duration,
) -> Result<(), String> {
    match kind {
        ProbeKind::Tcp => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("tcp {addr}: {e}")),
                Err(_) => Err(format!("tcp {addr}: timed out after {timeout:?}")),
            }
        }
        ProbeKind::Http {
            path,
            expect_status,
        } => match http::tcp(addr, &Call::get(path), timeout).await {
            Ok((status, _)) if status.as_u16() == *expect_status => Ok(()),
            Ok((status, _)) => Err(format!(
                "http://{addr}{path}: status {}, expected {expect_status}",
                status.as_u16()
            )),
            Err(e) => Err(e.to_string()),
        },
    }
}

/// Runs the probe of `gw` every interval until the receiver is gone.
pub async fn run_probe(gw: GatewayConfig, generation: u64, out: mpsc::Sender<ProbeResult>) {
    let mut tick = tokio::time::interval(gw.probe.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = probe_once(&gw).await;
        let msg = ProbeResult {
            gateway: gw.name.clone(),
            generation,
            result,
        };
        if out.send(msg).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;

    const OK: Result<(), String> = Ok(());
    fn fail() -> Result<(), String> {
        Err("down".into())
    }

    #[test]
    fn first_result_decides_then_rise_and_fall() {
        let mut h = Health::new(2, 3);
        assert!(!h.healthy);
        assert!(h.record(&OK), "first success: healthy at once");
        assert!(!h.record(&fail()));
        assert!(!h.record(&fail()));
        assert!(!h.record(&OK), "a success resets the fall streak");
        assert!(!h.record(&fail()));
        assert!(!h.record(&fail()));
        assert!(h.record(&fail()), "third consecutive failure");
        assert!(!h.healthy);
        assert_eq!(h.last_error.as_deref(), Some("down"));
        assert!(!h.record(&OK));
        assert!(h.record(&OK), "second consecutive success");
        assert!(h.healthy && h.last_error.is_none());
    }

    #[test]
    fn first_failure_keeps_it_down() {
        let mut h = Health::new(1, 1);
        assert!(!h.record(&fail()));
        assert!(h.probed && !h.healthy);
        assert!(h.record(&OK));
        assert!(h.record(&fail()));
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_local_servers() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_string();
                    let status = if req.starts_with("GET /ready ") {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    s.write_all(resp.as_bytes()).await.unwrap();
                });
            }
        });
        let t = Duration::from_secs(2);
        assert_eq!(probe_addr(addr, &ProbeKind::Tcp, t).await, Ok(()));
        let http = |path: &str| ProbeKind::Http {
            path: path.into(),
            expect_status: 200,
        };
        assert_eq!(probe_addr(addr, &http("/ready"), t).await, Ok(()));
        let err = probe_addr(addr, &http("/other"), t).await.unwrap_err();
        assert!(err.contains("status 503, expected 200"), "{err}");
        // A port nobody listens on: bind then drop to get one.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(probe_addr(closed, &ProbeKind::Tcp, t).await.is_err());
        assert!(probe_addr(closed, &http("/ready"), t).await.is_err());
    }
}
