//! A real Garage cluster for tests: three nodes (separate processes, data
//! folders and loopback ports), replication factor 3, one bucket and one
//! key made through Garage's own CLI (bucket `queryfs`). Dropped, it kills the nodes.
//!
//! The `garage` binary is found on `PATH` or in `~/.cargo/bin` (`.ci/run`
//! installs it with `cargo install --locked garage`); without it the tests
//! that need it fail, saying so.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct Garage {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub key_id: String,
    pub secret: String,
    bin: PathBuf,
}

pub(crate) struct Node {
    pub config: PathBuf,
    pub s3: u16,
    pub child: Option<Child>,
}

fn garage_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cargo/bin/garage");
    assert!(
        p.is_file(),
        "no garage binary on PATH or in ~/.cargo/bin: `cargo install --locked garage` (.ci/run does)"
    );
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Garage {
    /// Starts the cluster and waits until the bucket takes requests.
    pub fn start() -> Garage {
        let bin = garage_bin();
        let dir = tempfile::tempdir().unwrap();
        let secret: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let (rpc, s3, admin) = (free_port(), free_port(), free_port());
            let d = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let config = d.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 3
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"
bootstrap_peers = []

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                    d = d.display()
                ),
            )
            .unwrap();
            nodes.push(Node {
                config,
                s3,
                child: None,
            });
        }
        let mut g = Garage {
            dir,
            nodes,
            key_id: String::new(),
            secret: String::new(),
            bin,
        };
        for i in 0..3 {
            g.start_node(i);
        }
        let ids: Vec<String> = (0..3)
            .map(|i| {
                let out = g.retry(i, &["node", "id", "-q"]);
                out.trim().to_string()
            })
            .collect();
        for id in &ids[1..] {
            g.retry(0, &["node", "connect", id]);
        }
        // A node restarted after all were down finds the others by these.
        let peers = ids
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        for n in &g.nodes {
            let c = std::fs::read_to_string(&n.config).unwrap();
            let c = c.replace(
                "bootstrap_peers = []",
                &format!("bootstrap_peers = [{peers}]"),
            );
            std::fs::write(&n.config, c).unwrap();
        }
        for id in &ids {
            let short = id.split('@').next().unwrap();
            g.retry(0, &["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        g.retry(0, &["layout", "apply", "--version", "1"]);
        g.retry(0, &["bucket", "create", "queryfs"]);
        let key = g.retry(0, &["key", "create", "queryfs-key"]);
        let id_re = regex::Regex::new(r"GK[0-9a-f]{24}").unwrap();
        let secret_re = regex::Regex::new(r"(?i)secret key:\s*([0-9a-f]{64})").unwrap();
        g.key_id = id_re.find(&key).expect(&key).as_str().to_string();
        g.secret = secret_re.captures(&key).expect(&key)[1].to_string();
        g.retry(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                "queryfs",
                "--key",
                "queryfs-key",
            ],
        );
        g
    }

    pub fn start_node(&mut self, i: usize) {
        let log = std::fs::File::create(self.nodes[i].config.with_file_name("log")).unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[i].config)
            .arg("server")
            .env("RUST_LOG", "garage=warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("starting garage");
        self.nodes[i].child = Some(child);
    }

    /// SIGKILLs node `i`.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a garage CLI command against node `i` until it succeeds (the
    /// nodes take a moment to start and to find each other).
    fn retry(&self, i: usize, args: &[&str]) -> String {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let o = Command::new(&self.bin)
                .arg("-c")
                .arg(&self.nodes[i].config)
                .args(args)
                .output()
                .expect("running garage");
            if o.status.success() {
                return String::from_utf8_lossy(&o.stdout).into_owned();
            }
            assert!(
                Instant::now() < until,
                "garage {args:?} kept failing: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The S3 endpoint of node `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3)
    }

    /// The key's credentials.
    pub fn credentials(&self) -> (String, String) {
        (self.key_id.clone(), self.secret.clone())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }
}
