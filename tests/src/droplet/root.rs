//! [`RootCache`]: the cached `debootstrap --variant=minbase` root droplets
//! boot from, and the Debian mirror it is made from.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{BASE_PACKAGES, CACHE_DIR, DropletError, Result, SUITE, fnv1a, io_err, run};

/// A cached Debian root with systemd and the package's dependencies.
#[derive(Debug, Clone)]
pub struct RootCache {
    dir: PathBuf,
    packages: Vec<String>,
    /// How long making it took; `None` when it was already cached.
    pub built_in: Option<Duration>,
}

/// Serializes cache builds inside one process (threads); `flock` does it
/// between processes.
static BUILD: Mutex<()> = Mutex::new(());

impl RootCache {
    /// The root for `deb`: [`BASE_PACKAGES`] plus the names in its `Depends`.
    pub fn for_deb(deb: &Path) -> Result<RootCache> {
        RootCache::for_deb_with(deb, &[])
    }

    /// The root for `deb` with `extra` packages too (e.g.
    /// [`super::kube::KUBE_PACKAGES`]): a cached root of its own.
    pub fn for_deb_with(deb: &Path, extra: &[&str]) -> Result<RootCache> {
        let depends = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"))?;
        let mut packages: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
        packages.extend(depends_names(&depends));
        packages.extend(extra.iter().map(|s| s.to_string()));
        RootCache::ensure(&packages)
    }

    /// The root with exactly these packages (plus minbase), made if missing.
    pub fn ensure(packages: &[String]) -> Result<RootCache> {
        let set: BTreeSet<String> = packages.iter().cloned().collect();
        let packages: Vec<String> = set.into_iter().collect();
        let key = format!(
            "{:016x}",
            fnv1a(format!("v1 {SUITE} minbase {}", packages.join(",")).as_bytes())
        );
        let dir = Path::new(CACHE_DIR).join(format!("debroot-{SUITE}-{key}"));
        let mut cache = RootCache {
            dir,
            packages,
            built_in: None,
        };
        if cache.is_complete() {
            return Ok(cache);
        }
        let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        fs::create_dir_all(CACHE_DIR).map_err(io_err(CACHE_DIR))?;
        let lock_path = Path::new(CACHE_DIR).join("debroot.lock");
        let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
        // SAFETY: flock on a file descriptor we own; released when `lock` closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&lock_path)(std::io::Error::last_os_error()));
        }
        if !cache.is_complete() {
            let start = Instant::now();
            cache.build()?;
            cache.built_in = Some(start.elapsed());
        }
        drop(lock);
        Ok(cache)
    }

    /// The root directory (read-only for droplets: they run on an overlay).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    fn is_complete(&self) -> bool {
        self.dir.join("complete").exists() && self.root().join("usr/lib/systemd/systemd").exists()
    }

    fn build(&self) -> Result<()> {
        let mirror = debian_mirror()?;
        let tmp = self.dir.with_extension("partial");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let root = tmp.join("root");
        run(Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", self.packages.join(",")))
            .arg(SUITE)
            .arg(&root)
            .arg(&mirror))?;
        // debootstrap copies the host's name; droplets get theirs from nspawn.
        let _ = fs::remove_file(root.join("etc/hostname"));
        // Services of extra packages that must not run at boot.
        for (package, unit) in super::kube::MASKED_UNITS {
            if self.packages.iter().any(|p| p == package) {
                let link = root.join("etc/systemd/system").join(unit);
                let _ = fs::remove_file(&link);
                std::os::unix::fs::symlink("/dev/null", &link).map_err(io_err(&link))?;
            }
        }
        // The downloaded .debs are not needed to boot.
        let archives = root.join("var/cache/apt/archives");
        if let Ok(entries) = fs::read_dir(&archives) {
            for e in entries.flatten() {
                if e.path().extension() == Some(OsStr::new("deb")) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let list = tmp.join("packages");
        fs::write(&list, self.packages.join("\n") + "\n").map_err(io_err(&list))?;
        let done = tmp.join("complete");
        fs::write(&done, format!("{SUITE} from {mirror}\n")).map_err(io_err(&done))?;
        fs::rename(&tmp, &self.dir).map_err(io_err(&self.dir))
    }
}

/// Package names of a `Depends` field: first alternative, no versions.
pub fn depends_names(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let name = first.split([' ', '(', ':']).next()?.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// The Debian mirror of the host's apt configuration (`KUBEHA_DEBIAN_MIRROR`
/// overrides it): the first `deb` source for [`SUITE`] with `main`.
pub fn debian_mirror() -> Result<String> {
    if let Ok(m) = std::env::var("KUBEHA_DEBIAN_MIRROR")
        && !m.trim().is_empty()
    {
        return Ok(m.trim().to_string());
    }
    let mut searched = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut v: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        v.sort();
        files.extend(v);
    }
    files.push(PathBuf::from("/etc/apt/sources.list"));
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        searched.push(f.display().to_string());
        let found = match f.extension().and_then(OsStr::to_str) {
            Some("sources") => mirror_from_deb822(&text, SUITE),
            Some("list") => mirror_from_one_line(&text, SUITE),
            _ => None,
        };
        if let Some(m) = found {
            return Ok(m);
        }
    }
    Err(DropletError::NoMirror {
        searched: searched.join(", "),
    })
}

/// From deb822 `.sources` text.
pub fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    for para in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in para.lines() {
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let words = |k: &str| {
            get(k)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        if get("enabled").eq_ignore_ascii_case("no") {
            continue;
        }
        if words("types").iter().any(|t| t == "deb")
            && words("suites").iter().any(|s| s == suite)
            && words("components").iter().any(|c| c == "main")
            && let Some(uri) = words("uris").into_iter().next()
        {
            return Some(uri);
        }
    }
    None
}

/// From one-line `sources.list` text.
pub fn mirror_from_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let mut words = line.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        let mut uri = words.next()?;
        if uri.starts_with('[') {
            // options: `[arch=amd64 signed-by=…]`
            while !uri.ends_with(']') {
                uri = words.next()?;
            }
            uri = words.next()?;
        }
        let s = words.next()?;
        let comps: Vec<&str> = words.collect();
        (s == suite && comps.contains(&"main")).then(|| uri.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_mirror() {
        let text = "Types: deb\n# http://snapshot.example/archive\nURIs: http://mirror.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\n\
                    Types: deb\nURIs: http://security.example/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_from_deb822(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_from_deb822(text, "trixie"), None);
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://a.example/\nSuites: bookworm\nComponents: main\n";
        assert_eq!(mirror_from_deb822(disabled, "bookworm"), None);
        let src_only =
            "Types: deb-src\nURIs: http://a.example/\nSuites: bookworm\nComponents: main\n";
        assert_eq!(mirror_from_deb822(src_only, "bookworm"), None);
    }

    #[test]
    fn one_line_mirror() {
        let text = "# deb http://old.example/ bookworm main\n\
                    deb-src http://src.example/ bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n";
        assert_eq!(
            mirror_from_one_line(text, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            mirror_from_one_line("deb http://m.example/ bookworm contrib\n", "bookworm"),
            None
        );
    }

    #[test]
    fn depends_field() {
        assert_eq!(
            depends_names("libc6 (>= 2.34), libgcc-s1 (>= 4.2) | libgcc1, foo:any"),
            vec!["libc6", "libgcc-s1", "foo"]
        );
        assert!(depends_names("").is_empty());
    }
}
