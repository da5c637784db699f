//! What a lab host should look like.
use std::{fmt, net::IpAddr, str::FromStr};

use super::LabError;

/// An address with its prefix length, e.g. `10.77.0.10/24` or `fd77::10/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for IpNet {
    type Err = LabError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| LabError::BadAddress {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| bad("expected ADDRESS/PREFIX"))?;
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("prefix is not a number"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad(&format!("prefix must be at most {max}")));
        }
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// One host of a lab. Build with [`HostSpec::new`] and the chained setters.
#[derive(Clone, Debug, Default)]
pub struct HostSpec {
    pub name: String,
    pub addrs: Vec<IpNet>,
    pub loopback: Vec<IpAddr>,
    pub mac: Option<[u8; 6]>,
    /// Arguments of `ip route add`, e.g. `default via 10.77.0.1`.
    pub routes: Vec<String>,
    /// Extra sysctls (`net.ipv4.conf.eth0.arp_ignore` style keys). Keys of `eth0` are
    /// written once it exists, the others before any interface is created (so
    /// `conf.default.*` applies to `eth0`).
    pub sysctls: Vec<(String, String)>,
    /// IPv4 and IPv6 forwarding on (a router).
    pub forwarding: bool,
    /// The host transmits with XDP_TX: its switch-side peer gets `xdp_pass`.
    pub xdp_tx: bool,
    /// MTU of `eth0` and of its switch-side peer (default: the kernel's, 1500).
    pub mtu: Option<u32>,
}

impl HostSpec {
    /// A host with no addresses yet. Names: 1-12 characters of a-z and 0-9.
    pub fn new(name: &str) -> Self {
        HostSpec {
            name: name.to_owned(),
            ..Default::default()
        }
    }

    /// Adds an address on `eth0` (`10.77.0.10/24`).
    pub fn addr(mut self, cidr: &str) -> Result<Self, LabError> {
        self.addrs.push(cidr.parse()?);
        Ok(self)
    }

    /// Adds a VIP on loopback; the host will not answer ARP for it.
    pub fn vip(mut self, vip: IpAddr) -> Self {
        self.loopback.push(vip);
        self
    }

    /// Adds a route (`ip route add` arguments).
    pub fn route(mut self, route: &str) -> Self {
        self.routes.push(route.to_owned());
        self
    }

    /// Sets a sysctl inside the host.
    pub fn sysctl(mut self, key: &str, value: &str) -> Self {
        self.sysctls.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Turns IP forwarding on.
    pub fn forwarding(mut self) -> Self {
        self.forwarding = true;
        self
    }

    /// Marks the host as transmitting with XDP_TX.
    pub fn xdp_tx(mut self) -> Self {
        self.xdp_tx = true;
        self
    }

    /// Sets the MAC of `eth0` (default: derived from the host's position).
    pub fn mac(mut self, mac: [u8; 6]) -> Self {
        self.mac = Some(mac);
        self
    }

    /// Sets the MTU of `eth0` and of its switch-side peer, e.g. room for an
    /// encapsulation header on the links that carry tunnelled frames.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.mtu = Some(mtu);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs_and_rejects_bad_ones() {
        let a: IpNet = "10.77.0.10/24".parse().unwrap();
        assert_eq!(a.to_string(), "10.77.0.10/24");
        let b: IpNet = "fd77::10/64".parse().unwrap();
        assert_eq!(b.prefix, 64);
        for bad in [
            "10.0.0.1",
            "10.0.0.1/33",
            "x/24",
            "fd77::1/129",
            "10.0.0.1/x",
        ] {
            let err = bad.parse::<IpNet>().unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
