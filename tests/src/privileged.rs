//! The gate for tests that need root and network namespaces.
//!
//! They run in CI. They may be skipped only when `LB_SKIP_PRIVILEGED=1` is set (CI never
//! sets it), and then they say so loudly on stderr. Without root and without the variable
//! they fail: a silently skipped test would hide a broken suite.

/// The environment variable that allows skipping privileged tests.
pub const SKIP_VAR: &str = "LB_SKIP_PRIVILEGED";

/// Returns `true` when the calling test should run; `false` (after printing a loud notice)
/// when `LB_SKIP_PRIVILEGED=1` is set. Panics when not root and not allowed to skip.
pub fn require_root(test: &str) -> bool {
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        #[allow(
            clippy::print_stderr,
            reason = "the skip must be visible in the test output"
        )]
        {
            eprintln!(
                "\n*** SKIPPED privileged test `{test}`: {SKIP_VAR}=1 is set. This test needs root and network namespaces; CI always runs it. ***\n"
            );
        }
        return false;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "test `{test}` needs root (network namespaces, XDP); run it as root or set {SKIP_VAR}=1 to skip it explicitly"
    );
    true
}
