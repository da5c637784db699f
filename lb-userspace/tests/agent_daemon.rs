//! The state task wired to a fake L4 data path: gateway health and admin changes reach
//! the data path as whole desired states. No root needed (no VRRP
//! instance).
#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::{net::TcpListener, path::Path, time::Duration};

use lb_userspace::agent::{
    admin_state::Change,
    config,
    daemon::{self, Command},
    l4::{DesiredL4, FakeL4, L4Dataplane},
    metrics::Metrics,
};
use tokio::sync::oneshot;

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

async fn wait_for(fake: &FakeL4, what: &str, f: impl Fn(&DesiredL4) -> bool) -> DesiredL4 {
    for _ in 0..500 {
        if let Some(d) = fake.last()
            && f(&d)
        {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("data path never got: {what}; last: {:?}", fake.last());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_admin_changes_reach_the_data_path() {
    let dir = tempfile::tempdir().unwrap();
    let (la, a) = listener();
    let (lb, b) = listener();
    for l in [la, lb] {
        std::thread::spawn(move || for _ in l.incoming() {});
    }
    let text = format!(
        "[node]\nname = \"gw-b\"\nstate_dir = \"{}\"\n\
         [xdp]\ninterface = \"lo\"\nports = [{{ port = 443 }}]\n\
         [[gateways]]\nname = \"gw-b\"\naddress = \"127.0.0.1\"\nprobe = {{ kind = \"tcp\", port = {b}, interval_ms = 20, timeout_ms = 20, rise = 1, fall = 1 }}\n\
         [[gateways]]\nname = \"gw-a\"\naddress = \"127.0.0.1\"\nprobe = {{ kind = \"tcp\", port = {a}, interval_ms = 20, timeout_ms = 20, rise = 1, fall = 1 }}\n\
         [[gateways]]\nname = \"gw-c\"\naddress = \"127.0.0.3\"\nprobe = {{ kind = \"tcp\", port = 1, interval_ms = 20, timeout_ms = 20 }}\n",
        dir.path().display()
    );
    // No VRRP instance (that needs root), so no VIP and no service: the gateway table and
    // the ring membership are checked here, the rings per service in `agent::ring`.
    let cfg = config::parse(Path::new("t.toml"), &text).unwrap();
    // Applies take a while, as a real one may; a change is acknowledged only once the
    // data path has it.
    let fake = FakeL4 {
        delay: Duration::from_millis(200),
        ..FakeL4::default()
    };
    let handle = fake.clone();
    let factory: daemon::L4Factory =
        Box::new(move |_| Ok(Box::new(handle.clone()) as Box<dyn L4Dataplane>));
    let running = daemon::start(cfg, Metrics::new().unwrap(), &factory)
        .await
        .unwrap();

    // Ids by name: gw-a 0, gw-b 1 (this node), gw-c 2 (nothing listens on port 1).
    let d = wait_for(&fake, "gw-a and gw-b healthy", |d| {
        running.snapshot.borrow().ring.len() == 2 && !d.gateways.is_empty()
    })
    .await;
    assert_eq!(
        d.gateways
            .iter()
            .map(|g| (g.id, g.name.as_str(), g.local))
            .collect::<Vec<_>>(),
        [(0, "gw-a", false), (1, "gw-b", true), (2, "gw-c", false)]
    );
    assert_eq!(d.local_ipv4, Some("127.0.0.1".parse().unwrap()));
    assert!(d.services.is_empty(), "no VIP without a VRRP instance");

    let before = fake.applied.lock().unwrap().len();
    let (tx, rx) = oneshot::channel();
    running
        .commands
        .send(Command::Change {
            gateway: "gw-a".into(),
            change: Change::Drain,
            reply: tx,
        })
        .await
        .unwrap();
    let applied = rx.await.unwrap().unwrap();
    assert!(
        fake.applied.lock().unwrap().len() > before,
        "the drain was acknowledged before the data path had the new ring"
    );
    assert_eq!(applied.entry.version, 1);
    assert_eq!(
        running.snapshot.borrow().ring,
        vec![("gw-b".to_string(), 100)]
    );
    let (tx, rx) = oneshot::channel();
    running
        .commands
        .send(Command::Change {
            gateway: "nope".into(),
            change: Change::Enable,
            reply: tx,
        })
        .await
        .unwrap();
    assert!(rx.await.unwrap().is_err());
    let applies = fake.applied.lock().unwrap().len();
    assert!(applies >= 2, "every ring change is applied ({applies})");
    let (tx, rx) = oneshot::channel();
    running
        .commands
        .send(Command::Shutdown { reply: tx })
        .await
        .unwrap();
    rx.await.unwrap();
}
