//! What this binary is: the crate version and what build.rs recorded (git commit, cargo
//! profile, rustc), for `autolb version`, `autolb --version` and `autolb-echo --version`.

/// The crate version (`0.1.0`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built (12 hex digits), or what `AUTOLB_GIT_COMMIT` said at build time
/// outside a checkout, or `unknown`.
pub const GIT_COMMIT: &str = env!("AUTOLB_BUILD_GIT");
/// The cargo profile (`release`, `dist`, `debug` ...).
pub const PROFILE: &str = env!("AUTOLB_BUILD_PROFILE");
/// `rustc --version` of the compiler that built it.
pub const RUSTC: &str = env!("AUTOLB_BUILD_RUSTC");

/// The version and the build, one item a line (what `--version` prints after the name).
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ngit commit: ",
    env!("AUTOLB_BUILD_GIT"),
    "\nbuild profile: ",
    env!("AUTOLB_BUILD_PROFILE"),
    "\nrustc: ",
    env!("AUTOLB_BUILD_RUSTC"),
);
