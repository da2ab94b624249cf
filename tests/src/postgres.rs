//! A Postgres server of one test (Debian's `initdb` and `pg_ctl`, as the `postgres` user when
//! run as root) on a free loopback port, to stop and start under running servers; stopped on
//! drop.

use std::path::PathBuf;
use std::process::Command;

/// A Postgres cluster in a temporary directory.
pub struct PostgresProcess {
    /// Its port on 127.0.0.1.
    pub port: u16,
    bindir: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

fn pg_bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian postgresql (scripts/test installs it)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("an initdb under /usr/lib/postgresql")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl PostgresProcess {
    /// `initdb` and start. Commits are synchronous (an acknowledged commit survives an
    /// immediate stop); `fsync` is off because the machine itself does not crash here.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("pg");
        std::fs::create_dir_all(&data).expect("data dir");
        let pg = Self {
            port: crate::free_port(),
            bindir: pg_bindir(),
            data,
            _dir: dir,
        };
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg._dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let out = pg
            .run("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start_again();
        pg
    }

    fn run(&self, tool: &str) -> Command {
        let path = self.bindir.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`-m immediate`: no checkpoint, clients cut off, as a crash).
    pub fn stop_immediately(&self) {
        let _ = self
            .run("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }

    /// Starts the stopped server on the same port (recovering from its WAL).
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off",
            self.port,
            self.data.display()
        );
        let out = self
            .run("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PostgresProcess {
    fn drop(&mut self) {
        self.stop_immediately();
    }
}
