//! A minimal SMTP server on loopback that keeps every message it accepts, so
//! tests read the real emails the service sends. It can refuse the first N
//! messages (451) to exercise the sender's retries, refuse recipients for
//! good (550), and hold deliveries mid-conversation (`hold`), so a test sees
//! a message while it is being sent without racing the sender.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Mail {
    pub to: Vec<String>,
    pub data: String,
}

impl Mail {
    pub fn header(&self, name: &str) -> Option<String> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.data.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with(&prefix)
                .then(|| l[prefix.len()..].trim().to_string())
        })
    }

    /// The first token with this prefix (`ki_…`, `kp_…`) in the body.
    pub fn token(&self, prefix: &str) -> Option<String> {
        let start = self.data.find(&format!("{prefix}_"))?;
        Some(
            self.data[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
                .collect(),
        )
    }
}

pub struct SmtpSink {
    pub addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    refuse_next: Arc<AtomicUsize>,
    ctl: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

/// Recipient refusals and the hold gate, shared by all sessions.
#[derive(Default)]
struct Control {
    refused_rcpt: Mutex<Vec<String>>,
    /// Recipients whose message is refused after DATA with an answer that
    /// quotes the body's link, as some content filters do.
    echoed_rcpt: Mutex<Vec<(String, &'static str)>>,
    /// While true, MAIL FROM is not answered.
    held: Mutex<bool>,
    waiting: AtomicUsize,
    release: tokio::sync::Notify,
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let addr = listener.local_addr().expect("addr");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let refuse_next = Arc::new(AtomicUsize::new(0));
        let ctl = Arc::new(Control::default());
        let (m, r, c) = (mails.clone(), refuse_next.clone(), ctl.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let (m, r, c) = (m.clone(), r.clone(), c.clone());
                tokio::spawn(async move {
                    let _ = session(sock, m, r, c).await;
                });
            }
        });
        SmtpSink {
            addr,
            mails,
            refuse_next,
            ctl,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Refuse (451) the next `n` MAIL commands.
    pub fn refuse_next(&self, n: usize) {
        self.refuse_next.store(n, Ordering::SeqCst);
    }

    /// Refuse (550, permanent) every RCPT TO this address from now on.
    pub fn refuse_recipient(&self, to: &str) {
        self.ctl
            .refused_rcpt
            .lock()
            .expect("refused")
            .push(to.to_ascii_lowercase());
    }

    /// Refuse messages to this address after DATA with `code` (e.g. "550",
    /// "451") and an answer quoting the line of the body with the link.
    pub fn refuse_data_quoting_link(&self, to: &str, code: &'static str) {
        self.ctl
            .echoed_rcpt
            .lock()
            .expect("echoed")
            .push((to.to_ascii_lowercase(), code));
    }

    /// Stop answering MAIL FROM until `release`: a sender stays mid-delivery.
    pub fn hold(&self) {
        *self.ctl.held.lock().expect("held") = true;
    }

    pub fn release(&self) {
        *self.ctl.held.lock().expect("held") = false;
        self.ctl.release.notify_waiters();
    }

    /// Waits until `n` deliveries are waiting at the hold gate.
    pub async fn wait_held(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.ctl.waiting.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "no delivery reached the hold gate"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().expect("mails").clone()
    }

    /// Waits for the `n`-th (1-based) message to `to`.
    pub async fn wait_for(&self, to: &str, n: usize) -> Mail {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found: Vec<Mail> = self
                .mails()
                .into_iter()
                .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(to)))
                .collect();
            if found.len() >= n {
                return found[n - 1].clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no message #{n} to {to} within 20 s; have {:?}",
                    self.mails()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn count_to(&self, to: &str) -> usize {
        self.mails()
            .iter()
            .filter(|m| m.to.iter().any(|t| t.eq_ignore_ascii_case(to)))
            .count()
    }
}

async fn session(
    sock: tokio::net::TcpStream,
    mails: Arc<Mutex<Vec<Mail>>>,
    refuse: Arc<AtomicUsize>,
    ctl: Arc<Control>,
) -> std::io::Result<()> {
    let (read, mut write) = sock.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let mut to = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            write.write_all(b"250-sink\r\n250 8BITMIME\r\n").await?;
        } else if upper.starts_with("MAIL FROM") {
            let refused = refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refused {
                write.write_all(b"451 try again later\r\n").await?;
                continue;
            }
            // Refusals go first: a test can refuse one attempt and hold the next.
            ctl.waiting.fetch_add(1, Ordering::SeqCst);
            loop {
                let released = ctl.release.notified();
                if !*ctl.held.lock().expect("held") {
                    break;
                }
                released.await;
            }
            ctl.waiting.fetch_sub(1, Ordering::SeqCst);
            to.clear();
            write.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO") {
            let addr = line[8..]
                .trim()
                .trim_start_matches(':')
                .trim()
                .trim_matches(['<', '>'])
                .to_string();
            let refused = ctl
                .refused_rcpt
                .lock()
                .expect("refused")
                .contains(&addr.to_ascii_lowercase());
            if refused {
                write
                    .write_all(b"550 5.1.1 recipient refused: no such mailbox\r\n")
                    .await?;
                continue;
            }
            to.push(addr);
            write.write_all(b"250 OK\r\n").await?;
        } else if upper == "DATA" {
            write.write_all(b"354 go ahead\r\n").await?;
            let mut data = String::new();
            while let Some(l) = lines.next_line().await? {
                if l == "." {
                    break;
                }
                data.push_str(l.strip_prefix('.').unwrap_or(&l));
                data.push('\n');
            }
            let data = decode(&data);
            let echoed = ctl
                .echoed_rcpt
                .lock()
                .expect("echoed")
                .iter()
                .find(|(a, _)| to.iter().any(|t| t.eq_ignore_ascii_case(a)))
                .map(|(_, code)| *code);
            if let Some(code) = echoed {
                let link = data
                    .lines()
                    .find(|l| l.contains("token="))
                    .unwrap_or("")
                    .trim()
                    .to_string();
                write
                    .write_all(format!("{code} 5.7.1 content refused: {link}\r\n").as_bytes())
                    .await?;
                continue;
            }
            mails.lock().expect("mails").push(Mail {
                to: to.clone(),
                data,
            });
            write.write_all(b"250 OK queued\r\n").await?;
        } else if upper == "QUIT" {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            // RSET, NOOP and anything else.
            write.write_all(b"250 OK\r\n").await?;
        }
    }
    Ok(())
}

/// Decodes a quoted-printable body (RFC 2045), as a mail client would.
fn decode(data: &str) -> String {
    let Some((head, body)) = data.split_once("\n\n") else {
        return data.to_string();
    };
    if !head
        .to_ascii_lowercase()
        .contains("content-transfer-encoding: quoted-printable")
    {
        return data.to_string();
    }
    let joined = body.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&joined[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    format!("{head}\n\n{}", String::from_utf8_lossy(&out))
}
