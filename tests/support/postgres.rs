//! A PostgreSQL server of the test run's own, from the system's binaries: `initdb` into a
//! temporary directory, `pg_ctl start` on a free loopback port, stopped when the test
//! process ends (a watchdog beside it sees the process gone, even after a panic or a kill). As root,
//! both run as the `postgres` user, since PostgreSQL refuses to run as root.
//!
//! Each test takes a database of its own with [`fresh_database`]. With no PostgreSQL
//! binaries on the machine the tests that need one fail, naming what to install (`.ci/setup`
//! installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Server {
    pub port: u16,
    /// The data directory, removed by the watchdog when the server stops.
    pub dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
    /// The server's options (port, socket directory, settings), to start it again with.
    options: String,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The run's server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(start)
}

/// A server of the caller's own, for a test that stops or restarts it.
pub fn own_server() -> Server {
    start()
}

/// A new empty database on the run's server, as a URL for `cairn serve --store`.
pub fn fresh_database() -> String {
    server().fresh_database()
}

/// The first column of the first row `sql` answers on the database at `url`, as text.
pub fn query_text(url: &str, sql: &str) -> Option<String> {
    let sql = format!("SELECT ({sql})::text");
    with_client(url, async move |client| {
        let row = client.query_opt(&sql, &[]).await.unwrap();
        row.and_then(|row| row.get::<_, Option<String>>(0))
    })
}

/// Run `sql` (statements separated by `;`) on the database at `url`.
pub fn execute(url: &str, sql: &str) {
    let sql = sql.to_owned();
    with_client(url, async move |client| {
        client.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    })
}

/// Run `work` with a client of the database at `url`, connected once the server answers
/// (waiting up to a minute for one that is starting), on a thread and a runtime of its own,
/// so it may be called from inside a test's runtime.
fn with_client<T: Send + 'static>(
    url: &str,
    work: impl AsyncFnOnce(tokio_postgres::Client) -> T + Send + 'static,
) -> T {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                    Ok((client, connection)) => {
                        tokio::spawn(connection);
                        return work(client).await;
                    }
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(error) => panic!("the test PostgreSQL server does not answer: {error}"),
                }
            }
        })
    })
    .join()
    .unwrap()
}

impl Server {
    /// A new empty database on this server, as a URL for `cairn serve --store`.
    pub fn fresh_database(&self) -> String {
        let name = format!("t{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::SeqCst));
        execute(&self.url("postgres"), &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Run `pg_ctl` on the server with `args` (e.g. `restart -m immediate`), as its owner.
    pub fn pg_ctl(&self, args: &[&str]) {
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl");
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    /// Start the server again after a `stop`, on its port and with its settings.
    pub fn start_again(&self) {
        let log = self.dir.with_file_name("server.log");
        self.pg_ctl(&["-o", &self.options, "-l", &log.display().to_string(), "-w", "start"]);
    }

    fn command(&self, program: &str) -> Command {
        command(&self.bin.join(program), self.as_postgres)
    }
}

fn command(program: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Where `initdb` and `postgres` are: on the PATH, or in Debian's versioned directory.
fn binaries() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file());
    if let Some(dir) = on_path {
        return dir;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().expect(
        "PostgreSQL's server binaries (initdb, postgres) are not installed: \
         run .ci/setup, or apt-get install postgresql",
    )
}

fn start() -> Server {
    let bin = binaries();
    let as_postgres = unsafe { libc::geteuid() } == 0;
    let dir = std::env::temp_dir().join(format!("cairn-pg-{}-{}", std::process::id(), nanos()));
    std::fs::create_dir_all(&dir).unwrap();
    if as_postgres {
        let status = Command::new("chown").arg("postgres:postgres").arg(&dir).status().unwrap();
        assert!(status.success(), "chown the test PostgreSQL directory to postgres");
    }
    let data = dir.join("data");
    let initdb = command(&bin.join("initdb"), as_postgres)
        .arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run initdb");
    assert!(initdb.status.success(), "initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let pg_ctl = bin.join("pg_ctl");
    let options = format!(
        // `synchronous_commit` is off by default here, so the host's own `SET LOCAL` is what
        // makes its commits wait for the flush.
        "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=32MB \
         -c synchronous_commit=off",
        dir = dir.display()
    );
    let started = command(&pg_ctl, as_postgres)
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-l"])
        .arg(dir.join("server.log"))
        .args(["-w", "start"])
        .stdout(Stdio::null())
        .status()
        .expect("run pg_ctl start");
    assert!(started.success(), "the test PostgreSQL server did not start: see {}", dir.display());
    // A watchdog stops the server and removes its directory once this process is gone,
    // however it ended; the server itself may be restarted meanwhile.
    // In a session of its own and deaf to the terminal's signals, so a Ctrl-C of the test run
    // does not take it down before the server it is there to stop.
    let script = format!(
        "trap '' INT TERM HUP; while [ -d /proc/{parent} ]; do sleep 0.5; done; \
         {pg_ctl} -D {data} -m immediate stop >/dev/null 2>&1; rm -rf {dir}",
        parent = std::process::id(),
        pg_ctl = pg_ctl.display(),
        data = data.display(),
        dir = dir.display(),
    );
    let mut watchdog = command(Path::new("setsid"), as_postgres);
    watchdog.args(["sh", "-c", &script]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // It outlives this process by design: it is what stops the server after it.
    #[allow(clippy::zombie_processes)]
    watchdog.spawn().expect("start the test PostgreSQL server's watchdog");
    Server { port, dir: data, bin, as_postgres, options }
}

fn nanos() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos()
}
