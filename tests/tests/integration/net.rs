//! `--net user`: a virtio-net card with passt behind it. No internet is
//! needed: the server is on the (emulated) host, which the guest reaches
//! at its gateway address (passt maps it to the host's loopback). A plain
//! guest's kernel configures the card from passt's DHCP (`ip=dhcp`);
//! under `ferry run`, Ferry's init does.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use ferry_tests::{require_kvm, run_ferry_with, scratch_dir, Guest, Outcome};
use libtest_mimic::{Failed, Trial};

use crate::trial;
use crate::virtiofs::{pseudo_random, sha256_hex};
use crate::{check, guest_ok, line_with, TestResult};

/// An HTTP/1.0 server on the host's loopback that answers every GET with
/// `body`; returns its port. It serves until the test process ends.
fn serve(body: Arc<Vec<u8>>) -> std::io::Result<u16> {
    serve_on("127.0.0.1", body)
}

/// The same on `address`.
fn serve_on(address: &str, body: Arc<Vec<u8>>) -> std::io::Result<u16> {
    let listener = TcpListener::bind((address, 0))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(&conn);
                let mut line = String::new();
                // The request line and headers, up to the blank line.
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let mut out = &conn;
                let head = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = out.write_all(head.as_bytes());
                let _ = out.write_all(&body);
            });
        }
    });
    Ok(port)
}

/// A guest running `cmd` with `--net user`, whose kernel takes passt's
/// DHCP lease (`ip=dhcp`).
fn on_passt(cmd: &str) -> Guest {
    Guest::command(cmd)
        .arg("--net")
        .arg("user")
        .cmdline("ip=dhcp")
}

/// The shell words that print the guest's default gateway. (Debian's
/// busybox wget crashes with `-T`: the tests' deadlines bound it instead.)
const GATEWAY: &str = "$(busybox ip route | busybox awk '/^default/ {print $3}')";

/// A guest fetches 8 MiB from a server on the host through passt and
/// checks its sha256; its address came from passt's DHCP.
fn guest_fetches_from_the_host() -> TestResult {
    let body = Arc::new(pseudo_random(8 << 20, 16));
    let want = sha256_hex(&body);
    let port = serve(body)?;
    let cmd = format!(
        "busybox ip -4 addr show eth0 | grep -q 'inet ' && echo has-address; \
         busybox wget -q -O - http://{GATEWAY}:{port}/file | sha256sum"
    );
    let out = on_passt(&cmd).deadline(Duration::from_secs(180)).run()?;
    guest_ok(&out, 0)?;
    check(
        out.stdout.contains("has-address") && line_with(&out.stdout, &want).contains(&want),
        &format!("expected an address from DHCP and the body's sha256 {want}"),
        &out,
    )
}

/// `ferry run --net user` with `extra` arguments fetches 1 MiB from a
/// server on the host; its init configured the card from passt's DHCP
/// (address, default route, /etc/resolv.conf) before the command ran.
fn ferry_run_fetch(extra: &[&str], deadline: Duration) -> Result<Outcome, Failed> {
    require_kvm()?;
    let body = Arc::new(pseudo_random(1 << 20, 17));
    let want = sha256_hex(&body);
    let port = serve(body)?;
    let dir = scratch_dir("net_run");
    let cmd = format!(
        "echo ns=$(grep -c '^nameserver ' /etc/resolv.conf); \
         echo head=$(head -1 /etc/resolv.conf); \
         busybox ip -4 addr show eth0 | grep -q 'inet ' && echo has-address; \
         busybox wget -q -O - http://{GATEWAY}:{port}/file | sha256sum; uname -r"
    );
    let mut args: Vec<String> = ["run", "--net", "user"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--", "sh", "-c", &cmd].iter().map(|s| s.to_string()));
    let out = run_ferry_with(&args, None, deadline, |c| {
        c.current_dir(&dir);
    })?;
    check(
        out.code() == Some(0)
            && line_with(&out.stdout, "ns=").trim() != "ns=0"
            && line_with(&out.stdout, "head=").trim()
                == "head=# ferry run: name servers from the DHCP lease"
            && out.stdout.contains("has-address")
            && out.stdout.contains(&want),
        &format!(
            "expected the name servers Ferry's init wrote, an address and the body's sha256 {want}"
        ),
        &out,
    )?;
    Ok(out)
}

fn ferry_run_fetches_from_the_host() -> TestResult {
    ferry_run_fetch(&[], Duration::from_secs(180)).map(drop)
}

/// The same with Debian's kernel, whose virtio_net is a module (Ferry's
/// initramfs brings it) and which has no in-kernel DHCP (IP_PNP).
fn ferry_run_distro_kernel_fetches() -> TestResult {
    let (kernel, release) = crate::run::debian_kernel()?;
    let kernel = kernel.display().to_string();
    let out = ferry_run_fetch(&["--kernel", &kernel], crate::run::DISTRO_DEADLINE)?;
    check(
        out.stdout.lines().any(|l| l == release),
        &format!("expected the command to run on Debian's kernel {release}"),
        &out,
    )
}

/// `--publish HOST:GUEST`: an HTTP client on the host reaches busybox
/// httpd in the guest through passt's forward. (The client speaks first,
/// as HTTP does: Debian's passt 2023.03 acknowledges the guest's SYN-ACK
/// of a forwarded connection only with the client's first bytes or FIN,
/// so a server that must speak first, such as `nc -l`, waits until then;
/// Ferry's frames were traced to move at once both ways.)
fn published_port_reaches_the_guest() -> TestResult {
    use std::io::Read;
    let port: u16 = 45123;
    let dir = scratch_dir("net_publish");
    let (ready, done) = (dir.join("ready"), dir.join("done"));
    let _ = std::fs::remove_file(&ready);
    let _ = std::fs::remove_file(&done);
    let running = on_passt(
        "mount -t virtiofs m /mnt && mkdir -p /tmp/www && echo published-ok > /tmp/www/index.html \
         && busybox httpd -p 8080 -h /tmp/www && touch /mnt/ready \
         && while [ ! -e /mnt/done ]; do sleep 0.2; done",
    )
    .fs(&format!("tag=m,path={}", dir.display()))
    .arg("--publish")
    .arg(&format!("{port}:8080"))
    .deadline(Duration::from_secs(120))
    .spawn()?;
    let until = std::time::Instant::now() + Duration::from_secs(90);
    while !ready.exists() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut got = String::new();
    let mut tries = Vec::new();
    while ready.exists() && std::time::Instant::now() < until {
        let attempt = (|| -> std::io::Result<String> {
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
            conn.set_read_timeout(Some(Duration::from_secs(20)))?;
            conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            Ok(reply)
        })();
        match attempt {
            Ok(reply) if reply.contains("published-ok") => {
                got = reply;
                break;
            }
            other => tries.push(format!("{other:?}")),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(&done, "")?;
    let out = running.finish(Duration::from_secs(120))?;
    check(
        got.starts_with("HTTP/1.") && got.contains("published-ok"),
        &format!("the host's request through the published port got {got:?} (tries: {tries:?})"),
        &out,
    )?;
    guest_ok(&out, 0)
}

/// The children of `pid` whose name starts with `name`, from /proc
/// (passt re-executes itself as `passt.avx2` where the CPU has AVX2).
fn children_named(pid: u32, name: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map(|(_, c)| c).unwrap_or("");
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm.starts_with(name) && ppid == Some(pid) {
            if let Ok(child) = entry.file_name().to_string_lossy().parse() {
                found.push(child);
            }
        }
    }
    found
}

/// passt killed while the guest downloads: the card's backend goes down
/// (Ferry says so once), the guest's driver sees the link go (a
/// configuration interrupt), its transfer fails, and the VM ends with
/// the guest's own status: no hang, no crash.
fn passt_killed_mid_transfer() -> TestResult {
    // Endless, slow enough that the transfer is still going when passt dies.
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut out = &conn;
                let _ = out.write_all(b"HTTP/1.0 200 OK\r\n\r\n");
                while out.write_all(&[b'x'; 4096]).is_ok() {
                    std::thread::sleep(Duration::from_millis(5));
                }
            });
        }
    });
    let dir = scratch_dir("net_passt_killed");
    let started = dir.join("started");
    let _ = std::fs::remove_file(&started);
    let cmd = format!(
        "mount -t virtiofs m /mnt && touch /mnt/started && \
         busybox timeout 30 busybox wget -q -O /dev/null http://{GATEWAY}:{port}/; \
         echo wget-status=$?; echo carrier=$(cat /sys/class/net/eth0/carrier)"
    );
    let running = on_passt(&cmd)
        .fs(&format!("tag=m,path={}", dir.display()))
        .deadline(Duration::from_secs(150))
        .spawn()?;
    let until = std::time::Instant::now() + Duration::from_secs(90);
    while !started.exists() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    let passt = children_named(running.pid(), "passt");
    for pid in &passt {
        // SAFETY: a signal to a process we found as Ferry's child.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    let out = running.finish(Duration::from_secs(150))?;
    check(!passt.is_empty(), "no passt child of Ferry found", &out)?;
    guest_ok(&out, 0)?;
    check(
        line_with(&out.stdout, "wget-status=").trim() != "wget-status=0"
            && line_with(&out.stdout, "carrier=").trim() == "carrier=0"
            && out.stderr.contains("the network backend failed")
            && !out.stderr.contains("panicked"),
        "expected the transfer to fail, the guest to see the link down and Ferry to \
         name the backend's failure",
        &out,
    )
}

/// UDP both ways through passt: the guest's datagram reaches an echo
/// server on the host and the reply comes back; with `--publish
/// HOST:GUEST/udp`, a host datagram reaches a guest socket.
fn udp_both_ways() -> TestResult {
    use std::net::UdpSocket;
    use std::sync::atomic::{AtomicBool, Ordering};
    let echo = UdpSocket::bind("127.0.0.1:0")?;
    let echo_port = echo.local_addr()?.port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let mut reply = b"pong-".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = echo.send_to(&reply, from);
        }
    });
    // A free host port for the forward (taken back at once: passt binds it).
    let host_port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    const GUEST_PORT: u16 = 7777;
    let cmd = format!("ferry-udp ping {GATEWAY} {echo_port}; ferry-udp recv {GUEST_PORT}");
    let running = on_passt(&cmd)
        .arg("--publish")
        .arg(&format!("{host_port}:{GUEST_PORT}/udp"))
        .deadline(Duration::from_secs(180))
        .spawn()?;
    // The guest listens only once it has pinged: send until it is done.
    let done = Arc::new(AtomicBool::new(false));
    let sender = {
        let done = done.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            let sock = UdpSocket::bind("127.0.0.1:0")?;
            while !done.load(Ordering::Relaxed) {
                let _ = sock.send_to(b"hello-guest", ("127.0.0.1", host_port));
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(())
        })
    };
    let out = running.finish(Duration::from_secs(180));
    done.store(true, Ordering::Relaxed);
    let _ = sender.join();
    let out = out?;
    guest_ok(&out, 0)?;
    check(
        line_with(&out.stdout, "udp-reply=").trim() == "udp-reply=pong-ping"
            && line_with(&out.stdout, "udp-got=").trim() == "udp-got=hello-guest",
        "expected the echo's reply in the guest and the host's datagram through the forward",
        &out,
    )
}

/// Without `--net` the guest has no card: only `lo`.
fn no_card_without_net() -> TestResult {
    let out = Guest::command("ls /sys/class/net | tr '\\n' ' '; echo").run()?;
    guest_ok(&out, 0)?;
    check(
        line_with(&out.stdout, "lo").trim() == "lo",
        "expected only lo",
        &out,
    )
}

/// `--net user` with no passt on PATH: one clear line, before the guest.
fn missing_passt_is_named() -> TestResult {
    let out = Guest::command("true")
        .arg("--net")
        .arg("user")
        .env("PATH", "/nonexistent")
        .run()?;
    check(
        out.code().is_some_and(|c| c != 0)
            && out.stderr.contains("needs passt, which is not on PATH"),
        "expected the missing passt named with the install hint",
        &out,
    )
}

/// Runs `ip` with `args` (the emulated host's, as root).
fn ip(args: &str) -> Result<(), Failed> {
    let out = std::process::Command::new("ip")
        .args(args.split(' '))
        .output()?;
    if !out.status.success() {
        return Err(format!("ip {args}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

/// A tap of the host, removed when dropped.
struct Tap(&'static str);

impl Tap {
    /// Makes tap `name` for host user `owner`, with `address` (a /24) on
    /// the host's side and MTU 1400 (not a tap's default), up.
    fn new(name: &'static str, owner: u32, address: &str) -> Result<Tap, Failed> {
        let _ = ip(&format!("link del {name}"));
        ip(&format!("tuntap add dev {name} mode tap user {owner}"))?;
        let tap = Tap(name);
        ip(&format!("addr add {address}/24 dev {name}"))?;
        ip(&format!("link set {name} mtu 1400 up"))?;
        Ok(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = ip(&format!("link del {}", self.0));
    }
}

/// The guest's command, run by Ferry as the ordinary host user `USER`
/// (not root: attaching to a tap made for one's user needs no
/// privilege), with `--net tap=NAME`.
fn ferry_as_user_on_tap(name: &str, cmd: &str, cmdline: &str) -> Result<Outcome, Failed> {
    use crate::unprivileged::{kvm_group, USER};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("this test makes taps and starts Ferry as another user: it needs root".into());
    }
    let gid = kvm_group()?;
    // As udev leaves it on a host (the emulated host has no udev).
    std::fs::set_permissions("/dev/net/tun", std::fs::Permissions::from_mode(0o666))?;
    let dir = ferry_tests::test_dir(&format!("net_{name}"));
    std::os::unix::fs::chown(&dir, Some(USER), Some(gid))?;
    // The kernel may live in root's cache: a copy Ferry's user can read.
    let kernel = dir.join("bzImage");
    std::fs::copy(ferry_tests::kernel()?, &kernel)?;
    let mut guest = Guest::command(cmd)
        .kernel(kernel)
        .arg("--net")
        .arg(&format!("tap={name}"))
        .deadline(Duration::from_secs(180));
    if !cmdline.is_empty() {
        guest = guest.cmdline(cmdline);
    }
    Ok(guest.run_as(USER, gid)?)
}

/// `--net tap=NAME`: a guest with a static address on a tap made for
/// Ferry's (unprivileged) user fetches from a server on the host's side
/// of the tap and checks its sha256; the guest's MTU is the tap's.
fn tap_reaches_the_host() -> TestResult {
    let _tap = Tap::new("fytap0", crate::unprivileged::USER, "192.168.77.1")?;
    let body = Arc::new(pseudo_random(4 << 20, 18));
    let want = sha256_hex(&body);
    let port = serve_on("192.168.77.1", body)?;
    let cmd = format!(
        "echo mtu=$(cat /sys/class/net/eth0/mtu); \
         busybox wget -q -O - http://192.168.77.1:{port}/file | sha256sum"
    );
    let out = ferry_as_user_on_tap(
        "fytap0",
        &cmd,
        "ip=192.168.77.2::192.168.77.1:255.255.255.0::eth0:off",
    )?;
    guest_ok(&out, 0)?;
    check(
        line_with(&out.stdout, "mtu=").trim() == "mtu=1400"
            && line_with(&out.stdout, &want).contains(&want),
        &format!("expected the tap's MTU 1400 and the body's sha256 {want}"),
        &out,
    )
}

/// A tap made for another user: one clear line, no guest.
fn tap_of_another_user_is_refused() -> TestResult {
    let _tap = Tap::new("fytap1", 4242, "192.168.78.1")?;
    let out = ferry_as_user_on_tap("fytap1", "echo booted", "")?;
    check(
        out.code().is_some_and(|c| c != 0)
            && out
                .stderr
                .contains("--net tap=fytap1: not allowed to attach to it")
            && !out.stdout.contains("booted"),
        "expected the tap refused, with the hint to make one for the user",
        &out,
    )
}

/// `ferry run --net tap=NAME` on a network with no DHCP server: init
/// says so in one line and the run ends with 125, the command unrun.
fn ferry_run_tap_without_dhcp() -> TestResult {
    require_kvm()?;
    let _tap = Tap::new("fytap2", 0, "192.168.79.1")?;
    let dir = scratch_dir("net_tap_no_dhcp");
    let args: Vec<String> = ["run", "--net", "tap=fytap2", "--", "echo", "ran"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let out = run_ferry_with(&args, None, Duration::from_secs(180), |c| {
        c.current_dir(&dir);
    })?;
    check(
        out.code() == Some(125)
            && out
                .stderr
                .contains("nothing on the card's network answers DHCP")
            && !out.stdout.contains("ran"),
        "expected status 125 and the missing DHCP server named",
        &out,
    )
}

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "net::guest_fetches_from_the_host",
            guest_fetches_from_the_host,
        ),
        trial(
            "net::ferry_run_fetches_from_the_host",
            ferry_run_fetches_from_the_host,
        ),
        trial(
            "net::ferry_run_distro_kernel",
            ferry_run_distro_kernel_fetches,
        ),
        trial("net::published_port", published_port_reaches_the_guest),
        trial("net::udp_both_ways", udp_both_ways),
        trial("net::passt_killed_mid_transfer", passt_killed_mid_transfer),
        trial("net::tap_reaches_the_host", tap_reaches_the_host),
        trial("net::tap_of_another_user", tap_of_another_user_is_refused),
        trial(
            "net::ferry_run_tap_without_dhcp",
            ferry_run_tap_without_dhcp,
        ),
        trial("net::no_card_without_net", no_card_without_net),
        trial("net::missing_passt_is_named", missing_passt_is_named),
    ]
}
