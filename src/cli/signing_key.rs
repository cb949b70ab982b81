//! `flashgate gen-signing-key --out FILE`: a new Ed25519 key for signed
//! holds (docs/signed-holds.md), written as PKCS#8 PEM, readable by its
//! owner only; never over an existing file. Prints the key's `kid`.

use std::io::Write as _;
use std::path::PathBuf;

use clap::Args;

#[derive(Args, Debug)]
pub struct GenSigningKeyArgs {
    /// Where to write the private key (refused if the file exists).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: GenSigningKeyArgs) -> Result<(), String> {
    let (pem, kid) = crate::signing::generate_pem()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;
    println!("{kid}");
    Ok(())
}
