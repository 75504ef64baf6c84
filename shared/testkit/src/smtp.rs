//! A real SMTP server for tests (aiosmtpd, `tests/smtp/smtp_server.py`): every accepted
//! message is a file the test reads. Killed on drop; `kill` + `restart` keep port and mailbox.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Debug)]
pub struct SmtpServer {
    child: Option<Child>,
    port: u16,
    mailbox: tempfile::TempDir,
}

fn python() -> PathBuf {
    let local = crate::repo_root().join(".tools/venv/bin/python");
    if local.exists() { local } else { PathBuf::from("python3") }
}

impl SmtpServer {
    pub fn start() -> Self {
        let mailbox = tempfile::tempdir().expect("mailbox dir");
        let mut server = Self { child: None, port: 0, mailbox };
        server.spawn(None);
        server
    }

    /// A port nobody listens on yet, for a server started later (SMTP down at first).
    pub fn reserve() -> Self {
        let mailbox = tempfile::tempdir().expect("mailbox dir");
        Self { child: None, port: crate::free_port(), mailbox }
    }

    fn spawn(&mut self, port: Option<u16>) {
        let script = crate::repo_root().join("tests/smtp/smtp_server.py");
        let mut cmd = Command::new(python());
        cmd.arg(script).arg("--dir").arg(self.mailbox.path());
        if let Some(port) = port {
            cmd.args(["--port", &port.to_string()]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python with aiosmtpd (make test installs it)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
            if let Some(first) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        let line =
            rx.recv_timeout(Duration::from_secs(20)).expect("the SMTP server did not start (aiosmtpd installed?)");
        let ready: serde_json::Value = serde_json::from_str(&line).expect("ready line");
        self.port = ready["port"].as_u64().expect("port") as u16;
        self.child = Some(child);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `smtp://127.0.0.1:<port>` (plain; STARTTLS is used when a server offers it).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts on the same port, keeping the mailbox.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn(Some(port));
    }

    /// Every message received so far, oldest first, as text.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.mailbox.path())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        // Headers unfolded (RFC 5322 §2.2.3), so a test can search a long subject; then each
        // part's body decoded (quoted-printable, base64), so a test can search the text.
        files
            .iter()
            .filter_map(|p| std::fs::read(p).ok())
            .map(|raw| {
                let headers_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(raw.len());
                let headers = String::from_utf8_lossy(&raw[..headers_end])
                    .replace("\r\n ", " ")
                    .replace("\r\n\t", " ")
                    .replace("\n ", " ");
                let mut out = format!("{headers}\r\n\r\n");
                if let Ok(mail) = mailparse::parse_mail(&raw) {
                    for part in mail.parts() {
                        if part.subparts.is_empty() {
                            out.push_str(&format!("--part {}\r\n", part.ctype.mimetype));
                            out.push_str(&part.get_body().unwrap_or_default());
                            out.push_str("\r\n");
                        }
                    }
                }
                out
            })
            .collect()
    }

    /// Each message's text part and HTML part, decoded (empty when it has none).
    pub fn parts(&self) -> Vec<(String, String)> {
        self.messages()
            .iter()
            .map(|m| {
                let part = |kind: &str| {
                    m.split("--part ")
                        .find_map(|p| p.strip_prefix(kind))
                        .map(|body| body.trim_start_matches("\r\n").to_owned())
                        .unwrap_or_default()
                };
                (part("text/plain"), part("text/html"))
            })
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.kill();
    }
}
