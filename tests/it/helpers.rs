//! Shared test harness: a simulator, a worker and unique queue names on the real broker.
#![allow(dead_code)] // shared by every test module; not each uses every helper

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use serde_json::Value;

use wxdispatch::amqp::{self, Publisher};
use wxdispatch::app::{self, RunningWorker};
use wxdispatch::config::Config;
use wxdispatch::shutdown::Shutdown;
use wxdispatch::tools::mock::{Behaviour, MockConfig, MockServer};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const APPID: &str = "wxtest0000000001";
pub const SECRET: &str = "test-secret-1";

/// A random suffix so concurrent tests never share queues.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}.{:016x}", rand::random::<u64>())
}

/// Builds a configuration the way the binary does, from `WXD_*` settings.
pub fn config(prefix: &str, api_base: &str, extra: &[(&str, &str)]) -> Config {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        env.insert(k.to_string(), v.to_string());
    };
    set("WXD_AMQP_URL", AMQP_URL);
    set("WXD_JOBS_QUEUE", &format!("{prefix}.jobs"));
    set("WXD_OUTCOMES_EXCHANGE", &format!("{prefix}.outcomes"));
    set("WXD_OUTCOMES_QUEUE", &format!("{prefix}.outcomes"));
    set("WXD_DEAD_QUEUE", &format!("{prefix}.dead"));
    set("WXD_API_BASE", api_base);
    set("WXD_APPID", APPID);
    set("WXD_SECRET", SECRET);
    set("WXD_HTTP_ADDR", "127.0.0.1:0");
    set("WXD_RATE_PER_SEC", "10000");
    set("WXD_HTTP_TIMEOUT_MS", "1000");
    set("WXD_RETRY_BASE_MS", "20");
    set("WXD_LOG_FORMAT", "text");
    for (k, v) in extra {
        set(k, v);
    }
    Config::from_sources(None, &env).expect("test config is valid")
}

/// A simulator plus a worker on unique queues, and a client connection to inspect them.
pub struct Harness {
    pub config: Config,
    pub mock: MockServer,
    pub worker: Option<RunningWorker>,
    pub conn: Connection,
    pub publisher: Publisher,
    /// Outcomes from one long-lived consumer, started by the first `outcomes()` call.
    outcome_rx: tokio::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(Value, bool)>>>,
    /// Outcome keys seen so far, with what each said, to count duplicates across calls.
    seen: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Outcomes received more than once (at-least-once delivery).
    pub duplicate_outcomes: std::sync::atomic::AtomicUsize,
    /// Repeats that contradict the first outcome of the same job (another status or msgid):
    /// never acceptable, unlike an identical repeat.
    pub conflicting_outcomes: std::sync::atomic::AtomicUsize,
}

/// Harness options.
#[derive(Default)]
pub struct Opts<'a> {
    pub behaviour: Behaviour,
    /// Extra `WXD_*` settings for the worker.
    pub env: &'a [(&'a str, &'a str)],
    /// Extra simulator accounts.
    pub accounts: Vec<(String, String)>,
    /// Don't start the worker (the test starts it itself).
    pub no_worker: bool,
    /// The broker (a comma-separated list of nodes, as `WXD_AMQP_URL` takes) for both the
    /// worker and the harness's own connection; `AMQP_URL` when unset. The cluster tests need
    /// both on the cluster, not the worker there and the publisher on the machine's broker.
    pub amqp_url: Option<&'a str>,
}

impl Harness {
    pub async fn start(opts: Opts<'_>) -> Harness {
        let _ = tracing_subscriber_init();
        let mut accounts = vec![(APPID.to_string(), SECRET.to_string())];
        accounts.extend(opts.accounts);
        let mock = MockServer::start(
            "127.0.0.1:0",
            MockConfig {
                accounts,
                behaviour: opts.behaviour,
                push: None,
            },
        )
        .await
        .expect("simulator starts");
        let prefix = unique("wxd.test");
        let url = opts.amqp_url.unwrap_or(AMQP_URL);
        let mut env = vec![("WXD_AMQP_URL", url)];
        env.extend_from_slice(opts.env);
        let config = config(&prefix, &mock.base_url(), &env);
        let conn = amqp::connect(url, "wxdispatch-test")
            .await
            .expect("RabbitMQ on 127.0.0.1:5672 (start it with rabbitmq-server -detached)");
        let publisher = Publisher::new(&conn, &config).await.expect("channel");
        amqp::topology::declare(publisher.channel(), &config)
            .await
            .expect("declare");
        let mut h = Harness {
            config,
            mock,
            worker: None,
            conn,
            publisher,
            outcome_rx: tokio::sync::Mutex::new(None),
            seen: Default::default(),
            duplicate_outcomes: Default::default(),
            conflicting_outcomes: Default::default(),
        };
        if !opts.no_worker {
            h.start_worker().await;
        }
        h
    }

    pub async fn start_worker(&mut self) {
        let w = app::start(self.config.clone(), Shutdown::new())
            .await
            .expect("worker starts");
        self.worker = Some(w);
    }

    pub async fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop().await.expect("worker stops cleanly");
        }
    }

    /// Publishes a job body (with confirms) to the jobs queue, after checking that the job
    /// schema and the worker's parser agree on it.
    pub async fn publish_raw(&self, body: &[u8]) {
        crate::contract::check_job(body, None, &self.config);
        self.publisher
            .publish(
                "",
                &self.config.amqp.jobs_queue,
                body,
                BasicProperties::default().with_content_type("application/json".into()),
            )
            .await
            .expect("job published");
    }

    pub async fn publish(&self, job: &Value) {
        self.publish_raw(&serde_json::to_vec(job).unwrap()).await;
    }

    /// Publishes many jobs concurrently.
    pub async fn publish_many(&self, jobs: &[Value]) {
        let bodies: Vec<Vec<u8>> = jobs
            .iter()
            .map(|j| serde_json::to_vec(j).unwrap())
            .collect();
        for body in &bodies {
            crate::contract::check_job(body, None, &self.config);
        }
        let q = self.config.amqp.jobs_queue.clone();
        futures_util::stream::iter(bodies.iter())
            .map(|b| {
                self.publisher
                    .publish("", &q, b, BasicProperties::default())
            })
            .buffer_unordered(256)
            .for_each(|r| async move { r.expect("job published") })
            .await;
    }

    /// Reads `n` messages from `queue` (acking them), or fewer if `timeout` passes.
    pub async fn read(
        &self,
        queue: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<(Value, BasicProperties)> {
        let ch = self.conn.create_channel().await.unwrap();
        ch.basic_qos(500, Default::default()).await.unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => {
                    d.acker.ack(BasicAckOptions::default()).await.unwrap();
                    let v = serde_json::from_slice(&d.data).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&d.data).into_owned())
                    });
                    if d.exchange.as_str() == self.config.amqp.outcomes_exchange {
                        crate::contract::check_outcome(&v);
                    }
                    out.push((v, d.properties));
                }
                _ => break,
            }
        }
        let _ = ch.close(200, "done".into()).await;
        out
    }

    /// The next `n` distinct outcomes (a send by its id and touser, a receipt by its msgid and
    /// status — as a consumer would de-duplicate), or fewer if `timeout` passes. Repeats are
    /// counted in `duplicate_outcomes`, and in `conflicting_outcomes` when they say something
    /// else than the first one. Uses one long-lived consumer on the
    /// outcomes queue, so don't also `read()` that queue in the same test.
    pub async fn outcomes(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let mut rx = self.outcome_rx.lock().await;
        if rx.is_none() {
            *rx = Some(self.consume_outcomes().await);
        }
        let rx = rx.as_mut().unwrap();
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        while out.len() < n {
            let Ok(Some((v, from_worker))) = tokio::time::timeout_at(deadline, rx.recv()).await
            else {
                break;
            };
            if from_worker {
                crate::contract::check_outcome(&v);
            }
            // Sends are identified by (id, touser); receipts by (msgid, status).
            let key = if v["kind"] == "send" {
                format!("send|{}|{}", v["id"], v["touser"])
            } else {
                format!(
                    "{}|{}|{}|{}",
                    v["kind"], v["touser"], v["msgid"], v["status"]
                )
            };
            let says = format!("{}|{}|{}", v["status"], v["msgid"], v["reason"]);
            match self.seen.lock().unwrap().entry(key) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(says);
                    out.push(v);
                }
                std::collections::hash_map::Entry::Occupied(e) => {
                    self.duplicate_outcomes
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if *e.get() != says {
                        self.conflicting_outcomes
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }
        out
    }

    /// Waits `wait` for outcomes that arrive late (redeliveries), consuming them, and returns
    /// how many repeats were seen in all. Call it after the expected outcomes were read: an
    /// outcome never read is never counted.
    pub async fn late_duplicates(&self, wait: Duration) -> usize {
        let extra = self.outcomes(usize::MAX, wait).await;
        assert!(
            extra.is_empty(),
            "outcomes of jobs never expected: {extra:?}"
        );
        self.duplicate_outcomes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every message of the outcomes queue, and whether it came through the outcomes exchange
    /// (a worker's outcome, which must follow the schema) rather than a test's own publish.
    async fn consume_outcomes(&self) -> tokio::sync::mpsc::UnboundedReceiver<(Value, bool)> {
        let ch = self.conn.create_channel().await.unwrap();
        ch.basic_qos(1000, Default::default()).await.unwrap();
        let mut consumer = ch
            .basic_consume(
                self.config.amqp.outcomes_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let exchange = self.config.amqp.outcomes_exchange.clone();
        tokio::spawn(async move {
            let _ch = ch; // keep the channel open as long as the consumer runs
            while let Some(Ok(d)) = consumer.next().await {
                let _ = d.acker.ack(BasicAckOptions::default()).await;
                let v = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                if tx.send((v, d.exchange.as_str() == exchange)).is_err() {
                    break;
                }
            }
        });
        rx
    }

    /// Messages ready in a queue right now (passive declare; unacked ones are not counted).
    /// Panics if the queue cannot be read.
    pub async fn depth(&self, queue: &str) -> u32 {
        let ch = self.conn.create_channel().await.unwrap();
        let q = amqp::topology::depth(&ch, queue)
            .await
            .unwrap_or_else(|e| panic!("the depth of {queue}: {e}"));
        let _ = ch.close(200, "done".into()).await;
        q
    }

    /// Waits until the worker consumes the jobs queue, so its start-up (which declares the
    /// topology) is over: a test that then changes the topology is not undone by it.
    pub async fn until_consuming(&self) {
        let ch = self.conn.create_channel().await.unwrap();
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let q = ch
                .queue_declare(
                    self.config.amqp.jobs_queue.as_str().into(),
                    passive,
                    FieldTable::default(),
                )
                .await
                .expect("the jobs queue");
            if q.consumer_count() > 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker consumes within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = ch.close(200, "done".into()).await;
    }

    /// An exclusive queue (deleted with the harness's connection) bound to the outcome
    /// exchange with `key`, to see what a routing key reaches.
    pub async fn bind_outcomes(&self, key: &str) -> String {
        self.bind_queue(&self.config.amqp.outcomes_exchange, key)
            .await
    }

    /// An exclusive queue (deleted with the harness's connection) bound to `exchange` with
    /// `key`.
    pub async fn bind_queue(&self, exchange: &str, key: &str) -> String {
        let ch = self.publisher.channel();
        let options = lapin::options::QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        };
        let q = ch
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            q.name().as_str().into(),
            exchange.into(),
            key.into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        q.name().to_string()
    }

    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.worker.as_ref().unwrap().http_addr)
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.metrics_url())
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Stops the worker and deletes every queue and exchange the test used.
    pub async fn cleanup(mut self) {
        self.stop_worker().await;
        amqp::topology::delete(self.publisher.channel(), &self.config).await;
        let _ = self.conn.close(200, "bye".into()).await;
    }
}

impl Harness {
    /// The worker binary as a child process, on this harness's queues and simulator.
    pub fn worker_process(
        &self,
        appid: &str,
        secret: &str,
        extra: &[(&str, &str)],
    ) -> tokio::process::Child {
        self.worker_command(appid, secret, extra)
            .spawn()
            .expect("start the worker binary")
    }

    /// The command [`Harness::worker_process`] runs, for a test that needs to change it (to
    /// read the worker's logs, say): only `extra` and the harness's queues, nothing inherited
    /// from the test's environment; output discarded unless the test says otherwise.
    pub fn worker_command(
        &self,
        appid: &str,
        secret: &str,
        extra: &[(&str, &str)],
    ) -> tokio::process::Command {
        let c = &self.config;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"));
        cmd.arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WXD_AMQP_URL", AMQP_URL)
            .env("WXD_JOBS_QUEUE", &c.amqp.jobs_queue)
            .env("WXD_OUTCOMES_EXCHANGE", &c.amqp.outcomes_exchange)
            .env("WXD_OUTCOMES_QUEUE", &c.amqp.outcomes_queue)
            .env("WXD_DEAD_QUEUE", &c.amqp.dead_queue)
            .env("WXD_API_BASE", &c.wechat.api_base)
            .env("WXD_APPID", appid)
            .env("WXD_SECRET", secret)
            .env("WXD_RATE_PER_SEC", "100000")
            .env("WXD_HTTP_ADDR", "127.0.0.1:0")
            .env("WXD_LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// Replaces the configuration with one read from a TOML file body (several
    /// `[[accounts]]`), on this harness's queues, with secrets from `WXD_SECRET_<APPID>`.
    pub fn use_accounts_file(
        &mut self,
        toml: &str,
        secrets: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) {
        let c = &self.config;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in [
            ("WXD_AMQP_URL", AMQP_URL),
            ("WXD_JOBS_QUEUE", c.amqp.jobs_queue.as_str()),
            ("WXD_OUTCOMES_EXCHANGE", c.amqp.outcomes_exchange.as_str()),
            ("WXD_OUTCOMES_QUEUE", c.amqp.outcomes_queue.as_str()),
            ("WXD_DEAD_QUEUE", c.amqp.dead_queue.as_str()),
            ("WXD_API_BASE", c.wechat.api_base.as_str()),
            ("WXD_HTTP_ADDR", "127.0.0.1:0"),
        ] {
            env.insert(k.into(), v.into());
        }
        for (appid, secret) in secrets {
            env.insert(
                format!("WXD_SECRET_{}", appid.to_ascii_uppercase()),
                secret.to_string(),
            );
        }
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        self.config = Config::from_sources(Some(toml), &env).expect("valid accounts file");
    }
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `timeout`. Tests wait for
/// a count or a state this way, never for a fixed time: the timeout is a hang guard, long
/// enough for a loaded machine.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A sample job for recipient `touser`.
pub fn job(id: &str, touser: &str) -> Value {
    serde_json::json!({
        "id": id,
        "touser": touser,
        "template_id": "ngqIpbwh8bUfcSsECmogfXcV14J0tQlEpBO27izEYtY",
        "data": {"User": {"value": "黄先生", "color": "#173177"}}
    })
}

/// `n` jobs `<prefix>-<i>`, each to its own recipient `<prefix>-user-<i>`.
pub fn jobs(prefix: &str, n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| job(&format!("{prefix}-{i}"), &format!("{prefix}-user-{i}")))
        .collect()
}

/// Counts outcomes by status.
pub fn by_status(outcomes: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for o in outcomes {
        *m.entry(o["status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    m
}

/// The value of a metric sample line (`name{labels} value`), summed over matching lines.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn tracing_subscriber_init() -> Option<()> {
    if std::env::var_os("TEST_LOG").is_some() {
        wxdispatch::logging::init(wxdispatch::config::LogFormat::Text);
    }
    Some(())
}

/// Jobs parked in any of the delay queues right now (nothing consumes them there, so the
/// ready count is all of them): a check that jobs wait, which fails if they vanish instead.
pub async fn parked(h: &Harness) -> u32 {
    let mut n = 0;
    for tier in amqp::topology::DELAY_TIERS {
        n += h
            .depth(&amqp::topology::delay_queue(&h.config, *tier))
            .await;
    }
    n
}

/// The file every broker-touching run locks: shared by the parallel pass, exclusive by a
/// `serial_*` test (scripts/test.sh and docs/TESTING.md describe the protocol).
pub const BROKER_LOCK: &str = "/tmp/wxd-broker.lock";

/// The exclusive broker lock, held for as long as it lives. Every `serial_*` test (they stop,
/// block or cluster the broker, or measure rates against the clock) takes it first, so no
/// parallel run touches the broker meanwhile, whoever started the test.
pub struct SerialBroker {
    /// The file whose `flock` this is; `None` when a parent (`flock -x FILE cargo test …`)
    /// already holds the exclusive lock on a descriptor this process inherited.
    _file: Option<std::fs::File>,
}

/// Takes the exclusive broker lock, waiting for every other holder to finish.
///
/// A run wrapped in `flock -x /tmp/wxd-broker.lock` passes its locked descriptor down; locking
/// the file again on a new descriptor would wait for that parent for ever, so an inherited
/// exclusive lock is used as it is. An inherited shared one means a serial test was started
/// inside the parallel pass: that is refused, not waited on.
pub fn serial_broker() -> SerialBroker {
    use std::os::fd::AsRawFd;
    if let Some(mode) = inherited_broker_lock() {
        assert_eq!(
            mode, "WRITE",
            "a serial_ test was run under a shared {BROKER_LOCK} lock (the parallel pass); run it \
             alone: cargo test --test it serial_NAME -- --ignored --test-threads=1"
        );
        return SerialBroker { _file: None };
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(BROKER_LOCK)
        .unwrap_or_else(|e| panic!("open {BROKER_LOCK}: {e}"));
    // Blocks this thread until every shared holder (a parallel run) has finished.
    let rc =
        tokio::task::block_in_place(|| unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) });
    assert_eq!(
        rc,
        0,
        "flock {BROKER_LOCK}: {}",
        std::io::Error::last_os_error()
    );
    SerialBroker { _file: Some(file) }
}

/// The mode (`READ` or `WRITE`) of a `flock` on the broker lock held through a descriptor this
/// process inherited, from /proc/self/fdinfo (Linux lists each descriptor's own locks there).
fn inherited_broker_lock() -> Option<String> {
    let target = std::fs::canonicalize(BROKER_LOCK).ok()?;
    for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(target.as_path()) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/self/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .ok()?;
        let mode = info
            .lines()
            .filter(|l| l.starts_with("lock:") && l.contains("FLOCK"))
            .find_map(|l| l.split_whitespace().find(|w| *w == "READ" || *w == "WRITE"));
        if let Some(mode) = mode {
            return Some(mode.to_string());
        }
    }
    None
}

/// A RabbitMQ memory alarm (every publisher on the broker blocks) for as long as it lives.
/// The watermark in force before is read first and put back on drop, even when the test
/// panics. Only for `serial_*` tests run under `flock -x /tmp/wxd-broker.lock`.
pub struct MemoryAlarm {
    previous: Vec<String>,
}

impl MemoryAlarm {
    pub fn raise() -> MemoryAlarm {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])
            .output()
            .expect("rabbitmqctl");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // Either a fraction (`0.4`) or `{absolute,N}`.
        let previous = match text.strip_prefix("{absolute,") {
            Some(rest) => vec!["absolute".into(), rest.trim_end_matches('}').to_string()],
            None if text.parse::<f64>().is_ok() => vec![text],
            None => vec!["0.4".into()],
        };
        let alarm = MemoryAlarm { previous };
        let ok = std::process::Command::new("rabbitmqctl")
            .args(["set_vm_memory_high_watermark", "absolute", "1"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "could not raise a memory alarm");
        alarm
    }
}

/// Whether the broker has a memory alarm in force right now.
pub fn memory_alarm_in_force() -> bool {
    std::process::Command::new("rabbitmqctl")
        .args(["eval", "rabbit_alarm:get_alarms()."])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("memory"))
        .unwrap_or(false)
}

impl Drop for MemoryAlarm {
    fn drop(&mut self) {
        let mut args = vec!["set_vm_memory_high_watermark".to_string()];
        args.extend(self.previous.iter().cloned());
        let _ = std::process::Command::new("rabbitmqctl")
            .args(&args)
            .output();
    }
}

/// Runs `rabbitmqctl` with `args`: whether it succeeded, and what it printed.
pub fn rabbitmqctl(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A policy on one queue, removed when the test ends (even on panic).
pub struct Policy(pub String);

impl Policy {
    /// Applies `definition` (JSON) to the queues whose names match `pattern`, under a fresh
    /// policy name.
    pub fn set(pattern: &str, definition: &str) -> Policy {
        let policy = Policy(format!("wxd-test-{:08x}", rand::random::<u32>()));
        let (ok, text) = rabbitmqctl(&[
            "set_policy",
            "--apply-to",
            "queues",
            &policy.0,
            pattern,
            definition,
        ]);
        assert!(ok, "{text}");
        policy
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        let _ = rabbitmqctl(&["clear_policy", &self.0]);
    }
}

/// `s` as a literal in a RabbitMQ policy pattern.
pub fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = ".^$*+?()[]{}|\\".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}
