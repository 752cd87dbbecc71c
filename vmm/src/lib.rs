//! Ferry's VMM: the command line, the VM's lifecycle and `ferry run`. The
//! `ferry` binary (`main.rs`) is a thin front; the modules are a library
//! so that fuzz targets and benches reach the same parsing code.

pub mod allocator;
pub mod cli;
pub mod console;
pub mod control;
pub mod exit;
pub mod fs_option;
pub mod loader;
pub mod memory;
pub mod netif;
pub mod passt;
pub mod run;
pub mod sandbox;
pub mod size;
pub mod tap;
pub mod terminal;
pub mod vcpu;
pub mod vm;
pub mod vm_ops;
pub mod watchdog;
