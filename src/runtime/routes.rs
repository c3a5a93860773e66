//! The routes of a snapshot and their lookup index: the first declared route that matches a
//! request's host and path, found without scanning every route.
//!
//! Routes keep their documented semantics: they are tried in the order of the file and the
//! first match wins. The index answers the same question faster: exact hosts sit in a hash
//! map, `*.suffix` hosts in a second map keyed by the suffix (a host is looked up once per
//! dot it contains), routes without a host in a third place, and under each host the path
//! prefixes sit in a byte trie whose nodes remember the earliest route ending there. A lookup
//! walks the path once per candidate host entry (at most one exact entry, one per dot of
//! the host, and the any-host trie) and keeps the smallest route position it meets, which is
//! the route a scan in file order would have found first.

use std::collections::HashMap;
use std::sync::Arc;

use super::ip_limiter::IpLimiter;
use crate::config::Route as RouteConfig;

/// Up to this many routes a scan in order is as fast as the index and needs no memory.
const SCAN_LIMIT: usize = 8;

/// A route with its pool resolved to an index into `Snapshot::pools`.
#[derive(Debug)]
pub struct Route {
    /// Lower-case host; `*.example.com` matches subdomains; `None` matches all.
    host: Option<String>,
    path_prefix: Option<String>,
    pub pool: usize,
    /// The route's per-client-IP rate limit, shared by every connection and worker and kept
    /// across reloads while the route and its setting stay the same.
    pub rate_limit: Option<Arc<IpLimiter>>,
    /// The route's own `grpc_web` (it takes precedence over its pool's).
    pub grpc_web: Option<crate::config::GrpcWeb>,
    /// `cache:` the route's own HTTP cache (instead of its pool's).
    pub cache: Option<Arc<crate::cache::Cache>>,
    /// The route's own `compress` (it takes precedence over its pool's).
    pub compress: Option<crate::config::Compress>,
    /// `client_cert: required`: a verified client certificate or 403.
    pub client_cert_required: bool,
}

impl Route {
    /// `previous`: the last snapshot's route with the same match and pool (its cache and
    /// its rate limiter are kept while their settings stay the same).
    pub(super) fn from_config(route: &RouteConfig, pool: usize, previous: Option<&Route>) -> Self {
        Route {
            cache: crate::cache::Cache::reuse(
                route.cache.as_ref(),
                previous.and_then(|p| p.cache.as_ref()),
            ),
            host: route.host.as_ref().map(|h| h.to_ascii_lowercase()),
            path_prefix: route.path_prefix.clone(),
            pool,
            rate_limit: route
                .rate_limit
                .as_ref()
                .map(|r| IpLimiter::carried(previous.and_then(|p| p.rate_limit.as_ref()), r)),
            grpc_web: route.grpc_web.clone(),
            compress: route.compress.clone(),
            client_cert_required: route.client_cert_required,
        }
    }

    /// What identifies a route's limiter across reloads: what it matches and where it goes
    /// (not its position, so adding a route before it keeps its buckets).
    pub(super) fn limiter_key(route: &RouteConfig) -> String {
        format!(
            "\0route {}|{}|{}",
            route.host.as_deref().unwrap_or("*"),
            route.path_prefix.as_deref().unwrap_or(""),
            route.pool
        )
    }

    /// Does this route match `host` (already stripped of its port) and `path`?
    pub fn matches(&self, host: &str, path: &str) -> bool {
        if let Some(prefix) = &self.path_prefix {
            if !path.starts_with(prefix.as_str()) {
                return false;
            }
        }
        match &self.host {
            None => true,
            Some(pattern) => match pattern.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                }
                None => host.eq_ignore_ascii_case(pattern),
            },
        }
    }
}

/// The routes in file order and, when there are more than a few, their index.
#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    index: Option<Index>,
}

impl Routes {
    pub fn new(routes: Vec<Route>) -> Routes {
        let index = (routes.len() > SCAN_LIMIT).then(|| Index::build(&routes));
        Routes { routes, index }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Route> {
        self.routes.iter()
    }

    pub fn get(&self, position: usize) -> Option<&Route> {
        self.routes.get(position)
    }

    /// The position of the first route (in file order) matching `host` (without its port)
    /// and `path`.
    pub fn first_match(&self, host: &str, path: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.first_match(host, path),
            None => self.routes.iter().position(|r| r.matches(host, path)),
        }
    }
}

/// No route: larger than any route position.
const NONE: u32 = u32::MAX;

#[derive(Debug, Default)]
struct Index {
    exact: HashMap<Box<str>, PathTrie>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<Box<str>, PathTrie>,
    any_host: PathTrie,
}

impl Index {
    fn build(routes: &[Route]) -> Index {
        let mut index = Index::default();
        for (position, route) in routes.iter().enumerate() {
            let Ok(position) = u32::try_from(position) else {
                break; // four billion routes: the rest are never reached by a lookup
            };
            let prefix = route.path_prefix.as_deref().unwrap_or("").as_bytes();
            let trie = match route.host.as_deref() {
                None => &mut index.any_host,
                Some(pattern) => match pattern.strip_prefix("*.") {
                    Some(suffix) => index.wildcard.entry(suffix.into()).or_default(),
                    None => index.exact.entry(pattern.into()).or_default(),
                },
            };
            trie.insert(prefix, position);
        }
        index
    }

    fn first_match(&self, host: &str, path: &str) -> Option<usize> {
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        let path = path.as_bytes();
        let mut best = self.any_host.first_match(path, NONE);
        if let Some(trie) = self.exact.get(host) {
            best = trie.first_match(path, best);
        }
        if !self.wildcard.is_empty() {
            // `*.example.com` matches `a.example.com` and `a.b.example.com`, never
            // `example.com` itself: every suffix after a dot that is not the first byte.
            for (i, _) in host.match_indices('.').filter(|&(i, _)| i > 0) {
                if let Some(trie) = self.wildcard.get(&host[i + 1..]) {
                    best = trie.first_match(path, best);
                }
            }
        }
        (best != NONE).then_some(best as usize)
    }
}

/// Path prefixes by byte; each node holds the earliest route whose prefix ends there.
#[derive(Debug)]
struct PathTrie {
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    first: u32,
    /// Sorted by byte.
    children: Vec<(u8, u32)>,
}

impl Default for PathTrie {
    fn default() -> Self {
        PathTrie {
            nodes: vec![Node {
                first: NONE,
                children: Vec::new(),
            }],
        }
    }
}

impl PathTrie {
    fn insert(&mut self, prefix: &[u8], route: u32) {
        let mut at = 0usize;
        for &byte in prefix {
            let children = &self.nodes[at].children;
            at = match children.binary_search_by_key(&byte, |&(b, _)| b) {
                Ok(i) => children[i].1 as usize,
                Err(i) => {
                    let next = self.nodes.len();
                    self.nodes.push(Node {
                        first: NONE,
                        children: Vec::new(),
                    });
                    // Node counts stay far below u32::MAX: each byte of a prefix adds one.
                    self.nodes[at].children.insert(i, (byte, next as u32));
                    next
                }
            };
        }
        let node = &mut self.nodes[at];
        node.first = node.first.min(route);
    }

    /// The smaller of `best` and the earliest route whose prefix starts `path`.
    fn first_match(&self, path: &[u8], mut best: u32) -> u32 {
        let mut node = &self.nodes[0];
        best = best.min(node.first);
        for &byte in path {
            match node.children.binary_search_by_key(&byte, |&(b, _)| b) {
                Ok(i) => node = &self.nodes[node.children[i].1 as usize],
                Err(_) => break,
            }
            best = best.min(node.first);
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(host: Option<&str>, prefix: Option<&str>, pool: usize) -> Route {
        Route {
            host: host.map(str::to_ascii_lowercase),
            path_prefix: prefix.map(str::to_owned),
            pool,
            rate_limit: None,
            grpc_web: None,
            cache: None,
            compress: None,
            client_cert_required: false,
        }
    }

    fn scan(routes: &[Route], host: &str, path: &str) -> Option<usize> {
        routes.iter().position(|r| r.matches(host, path))
    }

    #[test]
    fn the_index_finds_the_first_declared_match() {
        let mut routes = Vec::new();
        for i in 0..20 {
            routes.push(route(Some(&format!("t{i}.example")), Some("/api"), i));
        }
        routes.push(route(Some("*.example"), Some("/api/v2"), 100));
        routes.push(route(Some("t3.example"), Some("/api/v2"), 101));
        routes.push(route(None, Some("/static"), 102));
        routes.push(route(Some("*.b.example"), None, 103));
        routes.push(route(None, None, 104));
        let table = Routes::new(routes);
        assert!(table.index.is_some());
        let pool = |h: &str, p: &str| table.first_match(h, p).map(|i| table.routes[i].pool);
        assert_eq!(
            pool("t3.example", "/api/v2/x"),
            Some(3),
            "earlier /api wins"
        );
        assert_eq!(pool("x.example", "/api/v2/x"), Some(100));
        assert_eq!(pool("example", "/api/v2/x"), Some(104), "*. needs a label");
        assert_eq!(
            pool("T7.Example", "/api"),
            Some(7),
            "hosts match in any case"
        );
        assert_eq!(pool("a.b.example", "/static/x"), Some(102));
        assert_eq!(pool("a.b.example", "/x"), Some(103));
        assert_eq!(pool("zz.example", "/x"), Some(104));
    }

    #[test]
    fn no_match_without_a_catch_all() {
        let routes = (0..30)
            .map(|i| route(Some(&format!("h{i}")), Some("/p"), i))
            .collect();
        let table = Routes::new(routes);
        assert_eq!(table.first_match("h1", "/q"), None);
        assert_eq!(table.first_match("nope", "/p"), None);
        assert_eq!(table.first_match("h29", "/p/x"), Some(29));
    }

    fn any_route() -> impl Strategy<Value = (Option<String>, Option<String>)> {
        let host = prop_oneof![
            Just(None),
            "[ab]{1,2}(\\.[ab]{1,2}){0,2}".prop_map(Some),
            "[ab]{1,2}(\\.[ab]{1,2}){0,1}".prop_map(|s| Some(format!("*.{s}"))),
        ];
        let prefix = prop_oneof![Just(None), "/[ab/]{0,4}".prop_map(Some)];
        (host, prefix)
    }

    proptest! {
        /// The index and a scan in file order always agree.
        #[test]
        fn the_index_agrees_with_a_scan(
            specs in prop::collection::vec(any_route(), 9..40),
            requests in prop::collection::vec(("[aAb]{1,2}(\\.[ab]{1,2}){0,3}", "/[ab/]{0,6}"), 1..20),
        ) {
            let routes: Vec<Route> = specs
                .iter()
                .enumerate()
                .map(|(i, (h, p))| route(h.as_deref(), p.as_deref(), i))
                .collect();
            let table = Routes::new(routes);
            for (host, path) in &requests {
                prop_assert_eq!(
                    table.first_match(host, path),
                    scan(&table.routes, host, path),
                    "{} {}", host, path
                );
            }
        }
    }
}
