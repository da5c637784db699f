//! The agent's Prometheus metrics. Names carry units and `_total` on counters; the XDP
//! counters are exported by a collector that reads the latest snapshot the state task
//! took, so a scrape never touches the maps.
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
    core::{Collector, Desc},
    proto::MetricFamily,
};

use super::l4::L4Counters;
use crate::vrrp::{packet::PacketError, state::Ignored};

/// Every metric of the agent, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// 1 for the instance's current role, 0 for the others.
    pub vrrp_role: IntGaugeVec,
    pub vrrp_priority: IntGaugeVec,
    pub vrrp_transitions: IntCounterVec,
    pub vrrp_adverts_sent: IntCounterVec,
    pub vrrp_adverts_received: IntCounterVec,
    pub vrrp_adverts_invalid: IntCounterVec,
    pub vrrp_adverts_ignored: IntCounterVec,
    pub vrrp_send_errors: IntCounterVec,
    /// How late the advert/master-down timer fired: the jitter the RFC timers see.
    pub vrrp_timer_lateness: HistogramVec,
    pub vrrp_vips_held: IntGaugeVec,
    pub gateway_healthy: IntGaugeVec,
    pub gateway_drained: IntGaugeVec,
    pub gateway_weight: IntGaugeVec,
    pub gateway_in_ring: IntGaugeVec,
    pub gateway_probes: IntCounterVec,
    pub ring_rebuilds: IntCounter,
    pub ring_members: IntGauge,
    pub ring_build_seconds: Histogram,
    pub l4_apply_errors: IntCounter,
    pub admin_state_version: IntGauge,
    pub admin_changes: IntCounterVec,
    pub cluster_syncs: IntCounterVec,
    pub cluster_unauthorized: IntCounter,
    pub config_reloads: IntCounterVec,
    pub priority_deduction: IntGauge,
    l4: Arc<Mutex<Option<L4Counters>>>,
}

/// A metric definition that does not register: only a programming error (duplicate or
/// malformed name) can cause it, and the unit test below registers every metric.
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let r = &registry;
        fn reg<C: Collector + Clone + 'static>(r: &Registry, c: C) -> Result<C, MetricsError> {
            r.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(r, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(r, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let m = Metrics {
            vrrp_role: gauge_vec(
                "lb_vrrp_role",
                "1 for the VRRP instance's current role (initialize, backup, master).",
                &["instance", "role"],
            )?,
            vrrp_priority: gauge_vec(
                "lb_vrrp_priority",
                "Effective VRRP priority after tracking deductions.",
                &["instance"],
            )?,
            vrrp_transitions: counter_vec(
                "lb_vrrp_transitions_total",
                "VRRP state transitions, by the state entered.",
                &["instance", "to"],
            )?,
            vrrp_adverts_sent: counter_vec(
                "lb_vrrp_adverts_sent_total",
                "VRRP advertisements sent.",
                &["instance"],
            )?,
            vrrp_adverts_received: counter_vec(
                "lb_vrrp_adverts_received_total",
                "Valid VRRP advertisements received.",
                &["instance"],
            )?,
            vrrp_adverts_invalid: counter_vec(
                "lb_vrrp_adverts_invalid_total",
                "VRRP packets discarded by the receive checks, by reason.",
                &["instance", "reason"],
            )?,
            vrrp_adverts_ignored: counter_vec(
                "lb_vrrp_adverts_ignored_total",
                "Valid adverts the state machine discarded, by reason.",
                &["instance", "reason"],
            )?,
            vrrp_send_errors: counter_vec(
                "lb_vrrp_send_errors_total",
                "Adverts or announcements that could not be sent.",
                &["instance", "kind"],
            )?,
            vrrp_timer_lateness: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "lb_vrrp_timer_lateness_seconds",
                        "How late VRRP timers fired after their deadline.",
                    )
                    .buckets(vec![
                        0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
                    ]),
                    &["instance"],
                )?,
            )?,
            vrrp_vips_held: gauge_vec(
                "lb_vrrp_vips_held",
                "1 when this node holds the instance's virtual addresses.",
                &["instance"],
            )?,
            gateway_healthy: gauge_vec(
                "lb_gateway_healthy",
                "1 when the gateway passes its probe.",
                &["gateway"],
            )?,
            gateway_drained: gauge_vec(
                "lb_gateway_admin_drained",
                "1 when the gateway is drained by an operator.",
                &["gateway"],
            )?,
            gateway_weight: gauge_vec(
                "lb_gateway_weight",
                "Effective Maglev weight of the gateway.",
                &["gateway"],
            )?,
            gateway_in_ring: gauge_vec(
                "lb_gateway_in_ring",
                "1 when the gateway takes new flows.",
                &["gateway"],
            )?,
            gateway_probes: counter_vec(
                "lb_gateway_probes_total",
                "Health probes of gateways, by result.",
                &["gateway", "result"],
            )?,
            ring_rebuilds: reg(
                r,
                IntCounter::new("lb_ring_rebuilds_total", "Maglev ring rebuilds.")?,
            )?,
            ring_members: reg(
                r,
                IntGauge::new("lb_ring_members", "Gateways in the Maglev ring.")?,
            )?,
            ring_build_seconds: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("lb_ring_build_seconds", "Time to build the Maglev ring.")
                        .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5]),
                )?,
            )?,
            l4_apply_errors: reg(
                r,
                IntCounter::new(
                    "lb_l4_apply_errors_total",
                    "Failed writes of the desired state to the XDP data path.",
                )?,
            )?,
            admin_state_version: reg(
                r,
                IntGauge::new(
                    "lb_admin_state_version",
                    "Highest version of any gateway's admin state held here.",
                )?,
            )?,
            admin_changes: counter_vec(
                "lb_admin_changes_total",
                "Admin-state entries taken, by source (local, peer).",
                &["source"],
            )?,
            cluster_syncs: counter_vec(
                "lb_cluster_syncs_total",
                "Admin-state exchanges with peers, by result.",
                &["peer", "result"],
            )?,
            cluster_unauthorized: reg(
                r,
                IntCounter::new(
                    "lb_cluster_unauthorized_total",
                    "Requests to the cluster endpoint refused for a missing or wrong token.",
                )?,
            )?,
            config_reloads: counter_vec(
                "lb_config_reloads_total",
                "Configuration reloads, by result.",
                &["result"],
            )?,
            priority_deduction: reg(
                r,
                IntGauge::new(
                    "lb_vrrp_priority_deduction",
                    "Sum of the weights of failing tracked checks.",
                )?,
            )?,
            l4: Arc::new(Mutex::new(None)),
            registry,
        };
        m.registry.register(Box::new(XdpCollector {
            counters: m.l4.clone(),
            descs: xdp_descs()?,
        }))?;
        Ok(m)
    }

    /// Replaces the XDP counter snapshot the next scrape exports.
    pub fn set_l4_counters(&self, counters: Option<L4Counters>) {
        *self.l4.lock().unwrap_or_else(PoisonError::into_inner) = counters;
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

const XDP_METRICS: [(&str, &str); 6] = [
    ("lb_xdp_exit_packets_total", "Packets by XDP exit reason."),
    ("lb_xdp_exit_bytes_total", "Bytes by XDP exit reason."),
    ("lb_xdp_service_packets_total", "Packets per VIP service."),
    ("lb_xdp_service_bytes_total", "Bytes per VIP service."),
    ("lb_xdp_gateway_packets_total", "Packets per gateway."),
    ("lb_xdp_gateway_bytes_total", "Bytes per gateway."),
];

fn xdp_descs() -> Result<Vec<Desc>, MetricsError> {
    let labels: [&[&str]; 3] = [&["reason"], &["vip", "port", "protocol"], &["gateway_id"]];
    XDP_METRICS
        .iter()
        .enumerate()
        .map(|(i, (name, help))| {
            let l = labels.get(i / 2).copied().unwrap_or_default();
            Ok(Desc::new(
                (*name).into(),
                (*help).into(),
                l.iter().map(|s| (*s).to_owned()).collect(),
                Default::default(),
            )?)
        })
        .collect()
}

/// Exports the last [`L4Counters`] snapshot as counters.
struct XdpCollector {
    counters: Arc<Mutex<Option<L4Counters>>>,
    descs: Vec<Desc>,
}

impl Collector for XdpCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snap = self
            .counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(c) = snap else {
            return Vec::new();
        };
        let mut fams = Vec::new();
        let mut family = |i: usize, rows: Vec<(Vec<(&str, String)>, u64)>| {
            let Some((name, help)) = XDP_METRICS.get(i) else {
                return;
            };
            let mut fam = MetricFamily::default();
            fam.set_name((*name).into());
            fam.set_help((*help).into());
            fam.set_field_type(prometheus::proto::MetricType::COUNTER);
            for (labels, value) in rows {
                let mut m = prometheus::proto::Metric::default();
                let mut counter = prometheus::proto::Counter::default();
                counter.set_value(value as f64);
                m.set_counter(counter);
                m.set_label(
                    labels
                        .into_iter()
                        .map(|(k, v)| {
                            let mut lp = prometheus::proto::LabelPair::default();
                            lp.set_name(k.into());
                            lp.set_value(v);
                            lp
                        })
                        .collect(),
                );
                fam.mut_metric().push(m);
            }
            fams.push(fam);
        };
        let exits = |f: fn(&super::l4::Count) -> u64| {
            c.exits
                .iter()
                .map(|(r, n)| (vec![("reason", r.clone())], f(n)))
                .collect()
        };
        family(0, exits(|n| n.packets));
        family(1, exits(|n| n.bytes));
        let services = |f: fn(&super::l4::Count) -> u64| {
            c.services
                .iter()
                .map(|(vip, port, proto, n)| {
                    (
                        vec![
                            ("vip", vip.to_string()),
                            ("port", port.to_string()),
                            ("protocol", proto.to_string()),
                        ],
                        f(n),
                    )
                })
                .collect()
        };
        family(2, services(|n| n.packets));
        family(3, services(|n| n.bytes));
        let gws = |f: fn(&super::l4::Count) -> u64| {
            c.gateways
                .iter()
                .map(|(id, n)| (vec![("gateway_id", id.to_string())], f(n)))
                .collect()
        };
        family(4, gws(|n| n.packets));
        family(5, gws(|n| n.bytes));
        fams
    }
}

/// The `reason` label of a rejected VRRP packet.
pub fn invalid_reason(e: &PacketError) -> &'static str {
    match e {
        PacketError::Truncated { .. } => "truncated",
        PacketError::WrongVersion { .. } => "version",
        PacketError::WrongType { .. } => "type",
        PacketError::AddressCountMismatch { .. } => "length",
        PacketError::BadChecksum { .. } => "checksum",
        PacketError::ZeroVrid => "vrid",
        PacketError::ZeroInterval | PacketError::IntervalTooLarge { .. } => "interval",
        PacketError::NoAddresses | PacketError::TooManyAddresses { .. } => "address_count",
        PacketError::FamilyMismatch { .. } | PacketError::WrongFamily { .. } => "family",
        PacketError::BadTtl { .. } => "ttl",
        PacketError::WrongProtocol { .. } => "protocol",
        PacketError::BadDestination { .. } => "destination",
        PacketError::UnknownPeer { .. } => "unknown_peer",
        PacketError::BadSource { .. } => "source",
        PacketError::MalformedIpHeader { .. } => "ip_header",
    }
}

/// The `reason` label of an advert the state machine discarded.
pub fn ignored_reason(i: &Ignored) -> &'static str {
    match i {
        Ignored::NotRunning => "not_running",
        Ignored::AddressOwner => "address_owner",
        Ignored::OtherVrid(_) => "other_vrid",
        Ignored::OtherFamily => "other_family",
        Ignored::AddressMismatch => "address_mismatch",
        Ignored::Preempting { .. } => "preempting",
        Ignored::LowerPriority { .. } => "lower_priority",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]
    use super::*;
    use crate::agent::l4::Count;

    #[test]
    fn every_metric_registers_and_renders() {
        let m = Metrics::new().unwrap();
        m.vrrp_role.with_label_values(&["v4", "master"]).set(1);
        m.vrrp_adverts_invalid
            .with_label_values(&["v4", invalid_reason(&PacketError::BadTtl { ttl: 1 })])
            .inc();
        m.set_l4_counters(Some(L4Counters {
            exits: vec![(
                "tx".into(),
                Count {
                    packets: 3,
                    bytes: 300,
                },
            )],
            services: vec![(
                "10.0.0.1".parse().unwrap(),
                80,
                super::super::l4::L4Protocol::Tcp,
                Count {
                    packets: 2,
                    bytes: 20,
                },
            )],
            gateways: vec![(
                1,
                Count {
                    packets: 1,
                    bytes: 10,
                },
            )],
        }));
        let text = m.render().unwrap();
        assert!(
            text.contains("lb_vrrp_role{instance=\"v4\",role=\"master\"} 1"),
            "{text}"
        );
        assert!(text.contains("lb_vrrp_adverts_invalid_total{instance=\"v4\",reason=\"ttl\"} 1"));
        assert!(
            text.contains("lb_xdp_exit_packets_total{reason=\"tx\"} 3"),
            "{text}"
        );
        assert!(
            text.contains(
                "lb_xdp_service_bytes_total{port=\"80\",protocol=\"tcp\",vip=\"10.0.0.1\"} 20"
            ) || text.contains(
                "lb_xdp_service_bytes_total{vip=\"10.0.0.1\",port=\"80\",protocol=\"tcp\"} 20"
            ),
            "{text}"
        );
    }
}
