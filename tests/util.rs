//! Helpers: run the real binary, mount a store for real, and clean up.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_queryfs"))
}

/// A program of the tools crate (tools/: `qfs-exercise`, `queryfs-bench`,
/// `qfs-passthrough`), which `cargo test` does not build (only the root
/// crate is a default member, so that `cargo install --path .` installs
/// `queryfs` only): built here, once per test run, with the cargo, profile
/// and target folder of the build running the tests.
pub fn tool(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let queryfs = bin();
    let out_dir = queryfs.parent().expect("target/PROFILE").to_path_buf();
    let target_dir = out_dir.parent().expect("target").to_path_buf();
    let exe = out_dir.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "queryfs-tools", "--bin", name])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir);
        if out_dir.file_name() == Some(std::ffi::OsStr::new("release")) {
            cmd.arg("--release");
        }
        let st = cmd.status().expect("running cargo build for a tool");
        assert!(
            st.success(),
            "cargo build -p queryfs-tools --bin {name} failed"
        );
        built.push(name.to_string());
    }
    exe
}

/// Runs `queryfs --store STORE ARGS...`.
pub fn qfs(store: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("running queryfs")
}

/// Runs queryfs and insists on success; returns stdout.
pub fn qfs_ok(store: &Path, args: &[&str]) -> String {
    let o = qfs(store, args);
    assert!(
        o.status.success(),
        "queryfs {args:?} failed ({:?}): {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// (mountinfo read as bytes: a mount point that is not UTF-8 elsewhere
/// must not hide this one; spaces are escaped as `\040`).
pub fn is_mounted(mp: &Path) -> bool {
    let want = mp
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .flat_map(|&b| match b {
            b' ' => b"\\040".to_vec(),
            b'\t' => b"\\011".to_vec(),
            b'\n' => b"\\012".to_vec(),
            b'\\' => b"\\134".to_vec(),
            b => vec![b],
        })
        .collect::<Vec<u8>>();
    std::fs::read("/proc/self/mountinfo")
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .any(|l| l.split(|&b| b == b' ').nth(4) == Some(want.as_slice()))
}

pub fn force_unmount(mp: &Path) {
    let c = std::ffi::CString::new(mp.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    unsafe {
        if libc::umount2(c.as_ptr(), 0) != 0 {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// A store mounted by the real binary in the foreground, as a child process.
pub struct Mount {
    pub store: PathBuf,
    pub mp: PathBuf,
    pub child: Option<Child>,
    extra: Vec<String>,
    /// Environment variables for the mount process.
    pub env: Vec<(String, String)>,
}

impl Mount {
    /// Creates a store under `dir` and mounts it at `dir/mnt`.
    pub fn new(dir: &Path) -> Mount {
        Self::with_args(dir, &[])
    }

    pub fn with_args(dir: &Path, extra: &[&str]) -> Mount {
        Self::with_env(dir, extra, &[])
    }

    /// Like [`Mount::with_args`], with environment variables for the mount
    /// process (test-only fault hooks).
    pub fn with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Mount {
        let store = dir.join("store");
        let mp = dir.join("mnt");
        if !store.join("queryfs.db").exists() {
            qfs_ok(&store, &["init"]);
        }
        std::fs::create_dir_all(&mp).unwrap();
        let mut m = Mount {
            store,
            mp: mp.canonicalize().unwrap(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        m.start();
        m
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new(bin())
            .arg("--store")
            .arg(&self.store)
            .arg("mount")
            .arg(&self.mp)
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning queryfs mount");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(&self.mp) {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("queryfs mount exited early: {st}");
            }
            assert!(Instant::now() < deadline, "mount did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Clean unmount through `queryfs umount`; waits for the process.
    pub fn stop(&mut self) {
        if self.child.is_some() {
            let o = Command::new(bin())
                .arg("umount")
                .arg(&self.mp)
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "umount: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let mut child = self.child.take().unwrap();
            let st = child.wait().unwrap();
            assert!(st.success(), "mount process exited with {st}");
            assert!(!is_mounted(&self.mp));
        }
    }

    /// SIGKILLs the serving process. The dead mount stays in place (every
    /// call on it fails with ENOTCONN) until [`Mount::clear_dead`], so that
    /// nothing can write to the directory underneath by mistake.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Unmounts a mount whose process was killed.
    pub fn clear_dead(&mut self) {
        assert!(self.child.is_none());
        force_unmount(&self.mp);
        assert!(!is_mounted(&self.mp));
    }

    pub fn remount(&mut self) {
        self.stop();
        self.start();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mp.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            force_unmount(&self.mp);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn info_json(store: &Path) -> serde_json::Value {
    serde_json::from_str(qfs_ok(store, &["info", "--json"]).trim()).unwrap()
}

// ----- system calls the tests make directly -----

pub fn c(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> Result<(), i32> {
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid pointers and lengths.
    let r = unsafe {
        libc::setxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

pub fn getxattr(p: &Path, name: &str) -> Result<Vec<u8>, i32> {
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid pointers and lengths.
    let r = unsafe {
        libc::getxattr(
            c(p).as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if r < 0 {
        return Err(errno());
    }
    buf.truncate(r as usize);
    Ok(buf)
}

pub fn listxattr(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid pointers and lengths.
    let r = unsafe { libc::listxattr(c(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(r >= 0, "listxattr: {}", errno());
    buf.truncate(r as usize);
    buf.split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect()
}

pub fn remove_xattr(p: &Path, name: &str) -> Result<(), i32> {
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C strings.
    let r = unsafe { libc::removexattr(c(p).as_ptr(), n.as_ptr()) };
    if r == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}
