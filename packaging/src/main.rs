//! `kubeha-gendoc OUTDIR`: writes the man pages and shell completions the
//! Debian package ships (see `scripts/deb-build`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: kubeha-gendoc OUTDIR");
        return ExitCode::from(64);
    };
    let out = PathBuf::from(out);
    let result = kubeha_packaging::PageInfo::from_env(env!("CARGO_PKG_VERSION"))
        .and_then(|info| kubeha_packaging::generate(&out, &info));
    match result {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kubeha-gendoc: {e}");
            ExitCode::from(1)
        }
    }
}
