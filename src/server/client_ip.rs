//! The client's address: the socket peer, unless the peer is a configured trusted proxy, in
//! which case the rightmost `X-Forwarded-For` entry that is not itself a trusted proxy.
//! `X-Forwarded-For` from anyone else is ignored: it is only a claim.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// Trusted proxy networks (`server.trusted_proxies`).
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(pub Vec<IpNet>);

impl TrustedProxies {
    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client address for a request that arrived from `peer`.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer_ip = peer.ip().to_canonical();
        if !self.trusts(peer_ip) {
            return peer_ip;
        }
        let mut client = peer_ip;
        // Later headers and later entries were added by nearer proxies: walk from the right.
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for entry in entries.iter().rev() {
            match entry.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip.to_canonical();
                    if !self.trusts(client) {
                        break;
                    }
                }
                // A malformed entry: stop at the last address we could trust.
                Err(_) => break,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn only_trusted_peers_may_forward() {
        let t = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let lb: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        let h = headers(&["198.51.100.7"]);
        assert_eq!(
            t.client_ip(lb, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            t.client_ip(stranger, &h),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // A client cannot smuggle an address in front of the proxy's entry.
        let h = headers(&["1.1.1.1, 198.51.100.7"]);
        assert_eq!(
            t.client_ip(lb, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // Chains of trusted proxies are skipped.
        let h = headers(&["198.51.100.7", "10.9.9.9"]);
        assert_eq!(
            t.client_ip(lb, &h),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            t.client_ip(lb, &headers(&[])),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            t.client_ip(lb, &headers(&["junk"])),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            TrustedProxies::default().client_ip(lb, &h),
            "10.1.2.3".parse::<IpAddr>().unwrap()
        );
    }
}
