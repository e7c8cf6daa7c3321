//! Writing the kubeadm config a node hands to `kubeadm init|join --config`
//! (rendered by `kubeha_core::kubeadm`). The files are root-only (0600) in a
//! root-only directory under `state_dir`: a join config holds the bootstrap
//! token and the certificate key, which never go on a command line.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kubeha_core::config::Config;
use kubeha_core::kubeadm::Render;

/// `<state_dir>/kubeadm`.
pub fn dir(config: &Config) -> PathBuf {
    config.state_dir.join("kubeadm")
}

/// Where the kube-apiserver patches go; what `NodeFacts::from_config` takes.
pub fn patches_dir(config: &Config) -> PathBuf {
    dir(config).join("patches")
}

/// Write `render` as `<dir>/<stem>.yaml` and its patches into
/// `<dir>/patches` (stale patches removed), all 0600; returns the config's path.
pub fn write(dir: &Path, stem: &str, render: &Render) -> std::io::Result<PathBuf> {
    let patches = dir.join("patches");
    for d in [dir, patches.as_path()] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)?;
        fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
    }
    for entry in fs::read_dir(&patches)? {
        let entry = entry?;
        let name = entry.file_name();
        if !render
            .patches
            .iter()
            .any(|(n, _)| name.to_str() == Some(n.as_str()))
        {
            fs::remove_file(entry.path())?;
        }
    }
    for (name, contents) in &render.patches {
        crate::state::write_atomic(&patches.join(name), contents.as_bytes())?;
    }
    let path = dir.join(format!("{stem}.yaml"));
    crate::state::write_atomic(&path, render.config.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_root_only_and_stale_patches_go() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("kubeadm");
        let with_patch = Render {
            config: "{\"token\": \"abcdef.0123456789abcdef\"}\n".into(),
            patches: vec![("kube-apiserver+json.json".into(), "[]\n".into())],
        };
        let path = write(&dir, "join", &with_patch).unwrap();
        assert_eq!(path, dir.join("join.yaml"));
        for p in [&path, &dir.join("patches/kube-apiserver+json.json")] {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        for d in [&dir, &dir.join("patches")] {
            assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let without = Render {
            config: "{}\n".into(),
            patches: vec![],
        };
        write(&dir, "join", &without).unwrap();
        assert_eq!(fs::read_dir(dir.join("patches")).unwrap().count(), 0);
        assert_eq!(fs::read_to_string(&path).unwrap(), "{}\n");
    }
}
