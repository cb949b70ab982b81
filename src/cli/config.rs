//! `flashgate config`: print the effective configuration, secrets redacted.

use super::ServeArgs;

pub(super) fn run(args: ServeArgs) -> Result<(), String> {
    args.resolve()
        .map(|c| print!("{}", c.redacted_toml()))
        .map_err(|e| e.to_string())
}
