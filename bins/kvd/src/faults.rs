//! Test-only fault injection, and the guard that keeps a test's fault from being silently
//! dropped.
//!
//! The faults — env variables that make the real binary crash or fail at a chosen moment, for
//! the reliability tests (`bins/kvd/tests/it/`, `docs/reliability.md`) — compile only with the
//! `fault-injection` feature (`injection.rs`: fail points and a failing WAL file system;
//! `corrupt_fetch.rs`: a follower that corrupts what it fetches). kvd's tests turn the feature on themselves (a
//! dev-dependency of kvd on itself); the default build, the kvd that ships, has none of that
//! code.
//!
//! The guard, [`check_environment`], is in every build and runs first. The fault variables are
//! `KVD_FAILPOINTS` and the `KVD_FAULT_*` family. A default build that finds one set refuses to
//! start: a test (or an operator who copied its command) must not believe a fault is injected
//! when this build cannot inject it. A fault build refuses a name of that family it does not
//! know, so a typo never runs a test without its fault.

#[cfg(feature = "fault-injection")]
mod corrupt_fetch;
#[cfg(feature = "fault-injection")]
mod injection;

use anyhow::bail;

#[cfg(feature = "fault-injection")]
pub use corrupt_fetch::follower_transport;
#[cfg(feature = "fault-injection")]
pub use injection::{configure_from_env, controller_file_system, peer_dial, wal_file_system};

/// Where this node connects for each peer address: without fault injection, nowhere else.
#[cfg(not(feature = "fault-injection"))]
pub fn peer_dial() -> anyhow::Result<std::collections::HashMap<String, String>> {
    Ok(std::collections::HashMap::new())
}

/// `url` (`http://host:port/…`) with its address replaced as `dial` says.
pub fn dialed_url(url: &str, dial: &std::collections::HashMap<String, String>) -> String {
    let Some(rest) = url.strip_prefix("http://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match dial.get(authority) {
        Some(via) => format!("http://{via}{path}"),
        None => url.to_owned(),
    }
}

/// The follower's transport to its leader: without fault injection, the HTTP one as it is.
#[cfg(not(feature = "fault-injection"))]
pub fn follower_transport(inner: kv_http::HttpTransport) -> anyhow::Result<kv_http::HttpTransport> {
    Ok(inner)
}

/// The fault variables this build reads: none without the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
const BUILT_IN: &[&str] = &injection::VARIABLES;
#[cfg(not(feature = "fault-injection"))]
const BUILT_IN: &[&str] = &[];

/// Refuses to start on a fault variable this build does not act on (see the module docs).
pub fn check_environment() -> anyhow::Result<()> {
    let names = std::env::vars_os().map(|(name, _)| name.to_string_lossy().into_owned());
    check_variables(names, BUILT_IN)
}

/// [`check_environment`] over given variable names and the fault variables a build reads.
fn check_variables(
    names: impl IntoIterator<Item = String>,
    built_in: &[&str],
) -> anyhow::Result<()> {
    for name in names {
        let is_fault = name == "KVD_FAILPOINTS" || name.starts_with("KVD_FAULT_");
        if !is_fault || built_in.contains(&name.as_str()) {
            continue;
        }
        if built_in.is_empty() {
            bail!(
                "{name} is set, but this kvd was built without fault injection: {name} is for \
                 kvd's tests, which build kvd with the `fault-injection` cargo feature; unset it"
            );
        }
        bail!(
            "{name} is not a fault variable: expected one of {}",
            built_in.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_variables;

    const FAULTS: [&str; 2] = ["KVD_FAILPOINTS", "KVD_FAULT_FSYNC_FAIL_AT"];

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| name.to_string()).collect()
    }

    #[test]
    fn a_build_without_fault_injection_refuses_every_fault_variable() {
        for name in [
            "KVD_FAILPOINTS",
            "KVD_FAULT_FSYNC_FAIL_AT",
            "KVD_FAULT_ANYTHING",
        ] {
            let error = check_variables(names(&["PATH", name]), &[]).unwrap_err();
            let message = error.to_string();
            assert!(
                message.contains(name) && message.contains("without fault injection"),
                "{message}"
            );
        }
    }

    #[test]
    fn a_fault_build_takes_its_variables_and_refuses_unknown_ones() {
        check_variables(names(&["PATH", "KVD_FAILPOINTS"]), &FAULTS).unwrap();
        check_variables(names(&["KVD_FAULT_FSYNC_FAIL_AT"]), &FAULTS).unwrap();
        let error = check_variables(names(&["KVD_FAULT_FSYNC_FAIL"]), &FAULTS).unwrap_err();
        assert!(
            error.to_string().contains("not a fault variable"),
            "{error}"
        );
    }

    #[test]
    fn other_variables_pass_in_every_build() {
        for built_in in [&[][..], &FAULTS[..]] {
            let others = names(&[
                "KVD_LISTEN",
                "KVD_FAILPOINTS_X",
                "KVD_FAULTY",
                "MAX_SEGMENT_SIZE",
            ]);
            check_variables(others, built_in).unwrap();
        }
    }

    #[test]
    fn this_build_reads_every_variable_the_tests_set() {
        // kvd's tests run a fault build (the dev-dependency turns the feature on); without
        // the feature the list is empty and this fails.
        for name in [
            "KVD_FAILPOINTS",
            "KVD_FAULT_FSYNC_FAIL_AT",
            "KVD_FAULT_WRITE_FAIL_AT",
            "KVD_FAULT_CORRUPT_FETCH_EVERY",
            "KVD_FAULT_FETCH_BLOCK_FILE",
            "KVD_FAULT_PEER_ROUTES",
        ] {
            assert!(super::BUILT_IN.contains(&name), "{name}");
        }
    }
}
