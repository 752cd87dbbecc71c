//! Builds the VM from the command line and runs it until something ends it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use ferry_arch::layout::{mmio64_start, MMIO32_BARS_SIZE, MMIO32_START, MMIO64_END};
use ferry_arch::{cpuid, lapic, mptable, msr, regs};
use ferry_devices::legacy::{
    ExitPort, HostInput, HostStreams, Serial, COM1_IRQ, COM1_PORT, EXIT_PORT, HOST_INPUT_PORT,
    HOST_INPUT_PORT_COUNT, HOST_STREAM_PORT, HOST_STREAM_PORT_COUNT, I8042, I8042_PORT,
    I8042_PORT_COUNT, SERIAL_PORT_COUNT,
};
use ferry_devices::pci::{PciRoot, PCI_CONFIG_PORT, PCI_CONFIG_PORT_COUNT};
use ferry_devices::virtio::fs::{FsShare, FsStats, VirtioFs};
use ferry_devices::virtio::net::{Link, NetStats, VirtioNet};
use ferry_devices::virtio::{VirtioPciDevice, VIRTIO_PCI_BAR_SIZE};
use ferry_devices::vm_ops::{GuestMemoryFault, VmOps};
use ferry_devices::Bus;
use vm_memory::GuestMemoryAtomic;

use crate::allocator::AddressAllocator;
use crate::fs_option::check_unique_tags;
use crate::sandbox::Sandbox;
use crate::vm_ops::KvmVmOps;

use crate::cli::{BootArgs, NetMode};
use crate::console::{FdWriter, InputSink, StdinPump, WindowSize};
use crate::control::{signalfd_for, take_stop_signals, Control, ReportRequests};
use crate::exit::{ExitReason, VmExit};
use crate::loader::{build_cmdline, load_kernel, KernelEntry};
use crate::memory::{create_guest_memory, register_guest_memory, GuestMemoryFerry};
use crate::terminal::{RawMode, RawTerminal};
use crate::vcpu::{install_kick_handler, kick_signal, Vcpu};
use crate::watchdog::{Epoch, VcpuProgress, Watchdog};

/// KVM needs three pages for the TSS inside the 32-bit hole, clear of BARs.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
const WATCHDOG_PERIOD: Duration = Duration::from_secs(1);
const INPUT_RETRY_MS: i32 = 10;

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Everything that describes one VM run.
pub struct VmConfig {
    /// `boot.kernel` must be set.
    pub boot: BootArgs,
    pub console: ConsoleMode,
    /// Stop the VM after this long (`ExitReason::Timeout`).
    pub timeout: Option<Duration>,
    /// Ferry's exit status should a sandbox violation stop it.
    pub violation_status: i32,
}

/// Where COM1 goes, and Ferry's stdin.
pub enum ConsoleMode {
    /// Stdin into COM1, COM1 to stdout, the terminal in raw mode meanwhile.
    Terminal,
    /// COM1 into `output`. With `stdin_to_port`, Ferry's stdin feeds the
    /// input port (`ferry run`'s command reads it); else it is not read.
    /// With `terminal`, the command has a pty in the guest: stdin, when a
    /// terminal, goes fully raw and its size follows SIGWINCH.
    Captured {
        output: Box<dyn std::io::Write + Send>,
        stdin_to_port: bool,
        terminal: bool,
    },
}

fn open_kvm() -> Result<Kvm> {
    let kvm =
        Kvm::new().context("cannot open /dev/kvm (is KVM available and accessible to you?)")?;
    for (cap, name) in [
        (Cap::Irqchip, "in-kernel irqchip"),
        (Cap::Irqfd, "irqfd"),
        (Cap::Ioeventfd, "ioeventfd"),
        (Cap::UserMemory, "user memory"),
        (Cap::Pit2, "PIT2"),
        (Cap::ExtCpuid, "CPUID2"),
    ] {
        if !kvm.check_extension(cap) {
            bail!("this KVM lacks {name} support, which Ferry needs");
        }
    }
    Ok(kvm)
}

fn create_vm(kvm: &Kvm) -> Result<Arc<VmFd>> {
    let vm = kvm.create_vm().context("KVM could not create a VM")?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .context("KVM_SET_TSS_ADDR")?;
    vm.create_irq_chip()
        .context("KVM could not create the in-kernel irqchip")?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .context("KVM could not create the in-kernel PIT")?;
    Ok(Arc::new(vm))
}

struct LegacyDevices {
    serial: Arc<Mutex<Serial>>,
    input: Arc<Mutex<HostInput>>,
    reset: EventFd,
}

fn add_legacy_devices(
    vm: &VmFd,
    io_bus: &Bus,
    exit: &Arc<VmExit>,
    console_out: Box<dyn std::io::Write + Send>,
) -> Result<LegacyDevices> {
    let serial_irq = EventFd::new(libc::EFD_NONBLOCK)?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .context("irqfd for COM1")?;
    let serial = Arc::new(Mutex::new(Serial::new(serial_irq, console_out)));
    io_bus.insert(serial.clone(), COM1_PORT, SERIAL_PORT_COUNT)?;

    let reset = EventFd::new(libc::EFD_NONBLOCK)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(reset.try_clone()?)));
    io_bus.insert(i8042, I8042_PORT, I8042_PORT_COUNT)?;

    let exit_port = Arc::new(Mutex::new(ExitPort::new(exit.clone())));
    io_bus.insert(exit_port, EXIT_PORT, 1)?;

    // Nobody reads Ferry's stdout any more (`ferry run -- yes | head -1`):
    // end the VM as SIGPIPE would end a host process.
    let stdout = StopOnBrokenPipe {
        out: FdWriter::STDOUT,
        exit: exit.clone(),
    };
    let streams = HostStreams::new(Box::new(stdout), Box::new(FdWriter::STDERR));
    io_bus.insert(
        Arc::new(Mutex::new(streams)),
        HOST_STREAM_PORT,
        HOST_STREAM_PORT_COUNT,
    )?;
    let input = Arc::new(Mutex::new(HostInput::new()));
    io_bus.insert(input.clone(), HOST_INPUT_PORT, HOST_INPUT_PORT_COUNT)?;
    Ok(LegacyDevices {
        serial,
        input,
        reset,
    })
}

/// Whether Ferry may read its stdin: not when it is closed, nor when it is
/// a terminal this process is in the background of (a read would stop
/// Ferry with SIGTTIN, as `cmd &` in a shell; such a run gets no input,
/// as with `< /dev/null`).
fn stdin_is_ours() -> bool {
    // SAFETY: fcntl, isatty, tcgetpgrp and getpgrp only inspect fd 0 and
    // this process.
    unsafe {
        if libc::fcntl(0, libc::F_GETFL) < 0 {
            return false;
        }
        if libc::isatty(0) == 1 && libc::tcgetpgrp(0) != libc::getpgrp() {
            log::debug!("stdin is a terminal Ferry runs in the background of: not read");
            return false;
        }
    }
    true
}

/// A writer that ends the VM with `Signal(SIGPIPE)` when its reader is gone.
struct StopOnBrokenPipe {
    out: FdWriter,
    exit: Arc<VmExit>,
}

impl std::io::Write for StopOnBrokenPipe {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.out.write(buf);
        if let Err(e) = &written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                self.exit.request(ExitReason::Signal(libc::SIGPIPE));
            }
        }
        written
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the VM keeps of its virtio-fs devices after building them.
#[derive(Default)]
struct FsDevices {
    /// Request counters by tag, logged at exit.
    stats: Vec<(String, Arc<FsStats>)>,
    /// What repairs device memory KVM cannot reach (the DAX windows),
    /// called by the vCPUs and once a second by the control loop.
    fault_hooks: Vec<Arc<dyn GuestMemoryFault>>,
    /// The network card's counters, logged at exit.
    net: Option<Arc<NetStats>>,
}

/// The guest's MAC address: locally administered (02:...), fixed, as
/// there is one card on a network of its own.
const GUEST_MAC: [u8; 6] = [0x02, 0x46, 0x52, 0x59, 0x00, 0x01];

/// The PCI root bus with one virtio-fs device per share.
fn add_pci_devices(
    cli: &BootArgs,
    sandbox: &Sandbox,
    vm: &Arc<VmFd>,
    mem: &GuestMemoryFerry,
    first_free_slot: u32,
    io_bus: &Bus,
    mmio_bus: &Arc<Bus>,
) -> Result<FsDevices> {
    let shares: Vec<FsShare> = cli.machine.fs.iter().map(|a| a.share.clone()).collect();
    check_unique_tags(&shares)?;
    let vm_ops: Arc<dyn VmOps> = Arc::new(KvmVmOps::new(vm.clone(), first_free_slot));
    let mut bars = AddressAllocator::new(MMIO32_START, MMIO32_BARS_SIZE);
    let mmio64 = mmio64_start(cli.machine.memory);
    let mut bars64 = AddressAllocator::new(mmio64, MMIO64_END.saturating_sub(mmio64));
    let mut root = PciRoot::new(mmio_bus.clone());
    let mut devices = FsDevices::default();
    let confine = sandbox.file_server();
    for share in &shares {
        let context = || format!("virtio-fs '{}'", share.tag);
        let fs = VirtioFs::new(share.clone(), confine.clone()).with_context(context)?;
        devices.stats.push((share.tag.clone(), fs.stats()));
        let bar = bars.allocate(VIRTIO_PCI_BAR_SIZE)?;
        let shm_bar = match share.dax_window {
            Some(size) => Some(bars64.allocate(size).with_context(context)?),
            None => None,
        };
        // Each device's own view of guest memory: RAM plus its own DAX
        // window, never another device's (whose pages it cannot check).
        let device = VirtioPciDevice::new(
            Box::new(fs),
            vm_ops.clone(),
            GuestMemoryAtomic::new(mem.clone()),
            bar,
            shm_bar,
        )
        .with_context(context)?;
        devices.fault_hooks.extend(device.memory_fault_hook());
        let slot = root
            .add_device(Arc::new(Mutex::new(device)))
            .with_context(context)?;
        let dax = match (share.dax_window, shm_bar) {
            (Some(size), Some(addr)) => format!(", DAX window {} MiB at {addr:#x}", size >> 20),
            _ => String::new(),
        };
        log::info!(
            "virtio-fs '{}' -> {} at PCI 00:{slot:02x}.0, BAR0 {bar:#x}{dax}{}",
            share.tag,
            share.path.display(),
            if share.readonly { " (read-only)" } else { "" }
        );
    }
    if let Some(mode) = &cli.machine.net {
        let context = || "virtio-net";
        let (backend, what) = match mode {
            NetMode::User => {
                let forwards: Vec<String> = cli
                    .machine
                    .publish
                    .iter()
                    .flat_map(|p| p.passt_args())
                    .collect();
                let stream = crate::passt::start(&forwards).context("--net user")?;
                (Link::Stream(stream), "passt".to_string())
            }
            NetMode::Tap(name) => {
                if !cli.machine.publish.is_empty() {
                    bail!("--publish forwards through passt: it needs --net user, not a tap");
                }
                (crate::tap::open(name)?, format!("tap {name}"))
            }
        };
        let net = VirtioNet::new(GUEST_MAC, backend, sandbox.network()).with_context(context)?;
        devices.net = Some(net.stats());
        let bar = bars.allocate(VIRTIO_PCI_BAR_SIZE)?;
        let device = VirtioPciDevice::new(
            Box::new(net),
            vm_ops.clone(),
            GuestMemoryAtomic::new(mem.clone()),
            bar,
            None,
        )
        .with_context(context)?;
        let slot = root
            .add_device(Arc::new(Mutex::new(device)))
            .with_context(context)?;
        log::info!("virtio-net ({what}) at PCI 00:{slot:02x}.0, BAR0 {bar:#x}");
    }
    io_bus.insert(
        Arc::new(Mutex::new(root)),
        PCI_CONFIG_PORT,
        PCI_CONFIG_PORT_COUNT,
    )?;
    Ok(devices)
}

fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    mem: &GuestMemoryFerry,
    cpus: u8,
    entry: KernelEntry,
) -> Result<Vec<kvm_ioctls::VcpuFd>> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .context("KVM_GET_SUPPORTED_CPUID")?;
    (0..cpus)
        .map(|id| {
            let fd = vm
                .create_vcpu(u64::from(id))
                .with_context(|| format!("KVM could not create vCPU {id}"))?;
            let mut cpuid = supported.clone();
            cpuid::filter_cpuid(&mut cpuid, id, cpus);
            fd.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
            msr::setup_msrs(&fd)?;
            lapic::setup_lint(&fd)?;
            if id == 0 {
                regs::setup_boot_vcpu(&fd, mem, entry.protocol, entry.entry, entry.boot_info)?;
            }
            Ok(fd)
        })
        .collect()
}

/// Raises the limit on open files: the file server keeps a descriptor per
/// inode the guest holds, and a guest creating 2,000 files went past the
/// usual soft limit of 1,024, and one walking a 20,000-entry tree past a
/// hard limit of 4,096 (EMFILE in the guest). The soft limit goes to the
/// hard one; with CAP_SYS_RESOURCE (root) both go to the kernel's
/// `fs.nr_open`.
fn raise_open_file_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok());
    // SAFETY: getrlimit/setrlimit read and write a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let old = lim.rlim_cur;
        if let Some(max) = nr_open.filter(|&m| m > lim.rlim_max) {
            let wider = libc::rlimit {
                rlim_cur: max,
                rlim_max: max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wider) == 0 {
                log::debug!("open file limit raised from {old} to {max}");
                return;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                log::debug!("open file limit raised from {old} to {}", lim.rlim_cur);
            }
        }
    }
}

/// Boots the guest described by `config` and returns why it ended.
pub fn run(config: VmConfig) -> Result<ExitReason> {
    let VmConfig {
        boot: cli,
        console: console_mode,
        timeout,
        violation_status,
    } = config;
    let kernel = cli.kernel.as_deref().context("no kernel given")?;
    let machine = &cli.machine;
    raise_open_file_limit();
    let sandbox = Sandbox::prepare(machine.sandbox, violation_status)?;
    let kvm = open_kvm()?;
    let vm = create_vm(&kvm)?;

    let mem = create_guest_memory(machine.memory)?;
    let first_free_slot = register_guest_memory(&vm, &mem)?;
    let cmdline = build_cmdline(&cli.cmdline)?;
    let entry = load_kernel(
        &mem,
        machine.memory,
        kernel,
        cli.initramfs.as_deref(),
        &cmdline,
    )?;
    mptable::setup_mptable(&mem, machine.cpus)?;

    let exit = Arc::new(VmExit::new()?);
    let io_bus = Arc::new(Bus::new());
    let mmio_bus = Arc::new(Bus::new());
    let (console_out, interactive, stdin_to_port, pty): (Box<dyn std::io::Write + Send>, _, _, _) =
        match console_mode {
            ConsoleMode::Terminal => (Box::new(FdWriter::STDOUT), true, false, false),
            ConsoleMode::Captured {
                output,
                stdin_to_port,
                terminal,
            } => (output, false, stdin_to_port, terminal),
        };
    // Blocked before any thread starts (the file servers' start with the
    // devices), so only the signalfds see them.
    let signals = take_stop_signals().context("signalfd")?;
    let winch = if pty {
        Some(signalfd_for(&[libc::SIGWINCH]).context("signalfd")?)
    } else {
        None
    };
    install_kick_handler().context("vCPU kick signal handler")?;
    let legacy = add_legacy_devices(&vm, &io_bus, &exit, console_out)?;
    let fs = add_pci_devices(
        &cli,
        &sandbox,
        &vm,
        &mem,
        first_free_slot,
        &io_bus,
        &mmio_bus,
    )?;
    let vcpu_fds = create_vcpus(&kvm, &vm, &mem, machine.cpus, entry)?;
    let fault_hooks: Arc<[Arc<dyn GuestMemoryFault>]> = fs.fault_hooks.clone().into();

    let mut event_manager = EventManager::<Subscriber>::new().context("event loop")?;
    let input_sink: Option<Arc<Mutex<dyn InputSink>>> = if stdin_to_port && stdin_is_ours() {
        Some(legacy.input.clone())
    } else {
        // The port has nothing to give: the guest sees EOF at once.
        legacy
            .input
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .close();
        interactive.then(|| legacy.serial.clone() as Arc<Mutex<dyn InputSink>>)
    };
    if let Some(signals) = winch {
        event_manager.add_subscriber(Arc::new(Mutex::new(WindowSize::new(
            signals,
            legacy.input.clone(),
        ))));
    }
    let console = match input_sink {
        Some(sink) => {
            let c = Arc::new(Mutex::new(StdinPump::new(sink)?));
            event_manager.add_subscriber(c.clone());
            Some(c)
        }
        None => None,
    };
    let reports = ReportRequests::default();
    event_manager.add_subscriber(Arc::new(Mutex::new(Control::new(
        exit.clone(),
        legacy.reset,
        signals,
        reports.clone(),
    ))));

    let epoch = Epoch::default();
    let mut progress = Vec::new();
    let mut threads = Vec::new();
    let terminal = if interactive {
        RawTerminal::enter(0, RawMode::Console)
    } else if pty {
        RawTerminal::enter(0, RawMode::Pty)
    } else {
        None
    };
    for (id, fd) in vcpu_fds.into_iter().enumerate() {
        let p = Arc::new(VcpuProgress::default());
        progress.push(p.clone());
        let vcpu = Vcpu {
            // At most MAX_CPUS (32) vCPUs: checked when the CLI was parsed.
            id: u8::try_from(id).expect("at most 32 vCPUs"),
            fd,
            io_bus: io_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            exit: exit.clone(),
            epoch: epoch.clone(),
            progress: p,
            fault_hooks: fault_hooks.clone(),
            reports: reports.clone(),
            reports_seen: 0,
            efault_since: None,
            sandbox: sandbox.clone(),
        };
        threads.push(vcpu.spawn().context("cannot start a vCPU thread")?);
    }
    // Last: a thread started after this would inherit the main filter.
    sandbox.confine_main()?;
    log::info!(
        "guest started: {} vCPU(s), {} MiB",
        machine.cpus,
        machine.memory >> 20
    );

    let deadline = timeout.map(|t| (Instant::now() + t, t));
    let limit = u32::try_from(machine.stall_timeout.div_ceil(WATCHDOG_PERIOD.as_secs()))
        .unwrap_or(u32::MAX);
    let mut watchdog = Watchdog::new(epoch, progress, limit);
    let mut next_tick = Instant::now() + WATCHDOG_PERIOD;
    let reason = loop {
        let pending = console
            .as_ref()
            .is_some_and(|c| c.lock().unwrap_or_else(|e| e.into_inner()).has_pending());
        let now = Instant::now();
        let next_wake = deadline.map_or(next_tick, |(d, _)| d.min(next_tick));
        let until_tick =
            i32::try_from(next_wake.saturating_duration_since(now).as_millis()).unwrap_or(i32::MAX);
        let timeout = if pending {
            INPUT_RETRY_MS.min(until_tick)
        } else {
            until_tick
        };
        event_manager
            .run_with_timeout(timeout.max(1))
            .context("event loop")?;
        if let Some(reason) = exit.reason() {
            break reason;
        }
        if let Some((at, t)) = deadline {
            if Instant::now() >= at {
                exit.request(ExitReason::Timeout(t));
                continue;
            }
        }
        if let Some(c) = &console {
            c.lock().unwrap_or_else(|e| e.into_inner()).flush_pending();
        }
        if Instant::now() >= next_tick {
            next_tick += WATCHDOG_PERIOD;
            if watchdog.tick() {
                exit.request(ExitReason::Stalled(format!(
                    "the guest stopped making progress: every vCPU has been halted with \
                     interrupts disabled (or never started) for {} s",
                    machine.stall_timeout
                )));
                continue;
            }
            for t in &threads {
                let _ = t.kill(kick_signal());
            }
            // Device memory KVM may be retrying without saying so (a DAX
            // page past the end of a file truncated on the host).
            for hook in fault_hooks.iter() {
                hook.on_tick();
            }
        }
    };
    drop(terminal);
    for (tag, stats) in &fs.stats {
        log::debug!("virtio-fs '{tag}' requests: {}", stats.summary());
    }
    if let Some(net) = &fs.net {
        let (rx, rx_dropped, tx, tx_dropped, failures) = net.snapshot();
        log::debug!(
            "virtio-net frames: {rx} received ({rx_dropped} dropped), {tx} sent \
             ({tx_dropped} dropped), backend failures {failures}"
        );
    }

    match &reason {
        ExitReason::GuestStatus(s) => log::info!("guest exited with status {s}"),
        ExitReason::Reset => log::info!("guest reset the machine; VM stopped"),
        ExitReason::TripleFault => log::info!("guest triple-faulted (KVM shutdown); VM stopped"),
        ExitReason::Signal(sig) => log::info!("stopped by signal {sig}"),
        ExitReason::Timeout(t) => log::info!("stopped after the {t:?} timeout"),
        ExitReason::Stalled(msg) | ExitReason::KvmError(msg) => log::debug!("stopped: {msg}"),
    }
    Ok(reason)
}
