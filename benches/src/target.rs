//! Target URLs: parsing `http://host:port`, resolving them once, and the loopback guard.
//!
//! kv-bench only ever sends traffic to the addresses the user names; it never discovers other
//! nodes. By default those addresses must be loopback (`127.0.0.0/8`, `::1`): loading another
//! machine takes an explicit `--allow-non-loopback`.

use std::net::SocketAddr;

use crate::BenchError;

/// A parsed `http://host[:port][/]` base URL of a kvd node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    /// The URL exactly as the user gave it, for reports.
    pub url_text: String,
    /// The host without IPv6 brackets, for name resolution.
    pub host: String,
    /// The TCP port (80 when the URL names none).
    pub port: u16,
    /// The `Host` header value, `host:port` as written in the URL.
    pub authority: String,
}

impl TargetUrl {
    /// Parses a base URL; only plain `http` with an empty or `/` path is accepted.
    pub fn parse(url_text: &str) -> Result<TargetUrl, BenchError> {
        let invalid = |reason: &str| BenchError::InvalidUrl {
            url: url_text.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url_text
            .parse()
            .map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(invalid("only http:// is supported")),
            None => return Err(invalid("missing scheme, write http://host:port")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| invalid("missing host"))?
            .clone();
        if authority.as_str().contains('@') {
            return Err(invalid("user info is not supported"));
        }
        let path = uri.path();
        if !(path.is_empty() || path == "/") || uri.query().is_some() {
            return Err(invalid(
                "give the node's base URL only; kv-bench adds /key/{key}",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        Ok(TargetUrl {
            url_text: url_text.to_string(),
            host,
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_string(),
        })
    }

    /// Resolves the host once; every address it yields must be loopback unless
    /// `allow_non_loopback`. Returns the first address.
    pub async fn resolve(&self, allow_non_loopback: bool) -> Result<SocketAddr, BenchError> {
        let socket_addresses: Vec<SocketAddr> =
            tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|source| BenchError::Resolve {
                    url: self.url_text.clone(),
                    source,
                })?
                .collect();
        let first = *socket_addresses
            .first()
            .ok_or_else(|| BenchError::Resolve {
                url: self.url_text.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
            })?;
        if !allow_non_loopback {
            if let Some(socket_address) = socket_addresses
                .iter()
                .find(|socket_address| !socket_address.ip().is_loopback())
            {
                return Err(BenchError::NonLoopbackTarget {
                    url: self.url_text.clone(),
                    socket_address: *socket_address,
                });
            }
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_host_port_and_default_port() {
        let target = TargetUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(target.host, "127.0.0.1");
        assert_eq!(target.port, 8080);
        assert_eq!(target.authority, "127.0.0.1:8080");

        let target = TargetUrl::parse("http://localhost/").unwrap();
        assert_eq!(target.port, 80);
        assert_eq!(target.authority, "localhost");

        let target = TargetUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!(target.host, "::1");
        assert_eq!(target.authority, "[::1]:9000");
    }

    #[test]
    fn rejects_what_it_cannot_drive() {
        for url_text in [
            "127.0.0.1:8080",
            "https://127.0.0.1:8080",
            "http://127.0.0.1:8080/key/x",
            "http://127.0.0.1:8080/?a=b",
            "http://user@127.0.0.1:8080",
            "not a url",
        ] {
            let result = TargetUrl::parse(url_text);
            assert!(
                matches!(result, Err(BenchError::InvalidUrl { .. })),
                "{url_text:?} gave {result:?}"
            );
        }
    }

    #[tokio::test]
    async fn loopback_guard() {
        let loopback = TargetUrl::parse("http://127.0.0.1:1").unwrap();
        assert!(loopback.resolve(false).await.is_ok());

        let remote = TargetUrl::parse("http://192.0.2.1:1").unwrap();
        assert!(matches!(
            remote.resolve(false).await,
            Err(BenchError::NonLoopbackTarget { .. })
        ));
        // Resolving is not connecting: nothing is sent to the documentation address.
        assert!(remote.resolve(true).await.is_ok());
    }
}
