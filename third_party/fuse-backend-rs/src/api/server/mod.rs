// Copyright (C) 2020-2022 Alibaba Cloud. All rights reserved.
// Copyright 2019 The Chromium OS Authors. All rights reserved.
// Use of this source code is governed by a BSD-style license that can be
// found in the LICENSE-BSD-3-Clause file.

//! Fuse API Server to interconnect transport layers with filesystem drivers.
//!
//! The Fuse API server is a adapter layer between transport layers and file system drivers.
//! The main functionalities of the Fuse API server is:
//! * Support different types of transport layers, fusedev, virtio-fs or vhost-user-fs.
//! * Hide different transport layers details from file system drivers.
//! * Parse transport messages according to the Fuse ABI to avoid duplicated message decoding
//!   in every file system driver.
//! * Invoke file system driver handler to serve each request and send the reply.
//!
//! The Fuse API server is performance critical, so it's designed to support multi-threading by
//! adopting interior-mutability. And the arcswap crate is used to implement interior-mutability.

use std::ffi::CStr;
use std::io::{self, Read};
use std::marker::PhantomData;
use std::mem::size_of;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::abi::fuse_abi::*;
use crate::api::filesystem::{Context, FileSystem, ZeroCopyReader, ZeroCopyWriter};
use crate::file_traits::FileReadWriteVolatile;
use crate::transport::{Reader, Writer};
use crate::{bytes_to_cstr, BitmapSlice, Error, Result};

#[cfg(feature = "async-io")]
mod async_io;
mod sync_io;

/// Ferry: the supplementary group a creating request carries
/// (FUSE_CREATE_SUPP_GROUP), for the request being served on this thread.
pub mod supp_group {
    use std::cell::Cell;

    use crate::abi::fuse_abi::FUSE_EXT_GROUPS;

    thread_local!(static GROUP: Cell<Option<u32>> = const { Cell::new(None) });

    pub(crate) fn set(group: Option<u32>) {
        GROUP.with(|g| g.set(group));
    }

    /// The group of the request being served, once.
    pub(crate) fn take() -> Option<u32> {
        GROUP.with(|g| g.take())
    }

    /// Translates the group of the request being served (a guest id) with
    /// `map` (to a host id), for a file system that maps ids.
    pub fn remap(map: impl FnOnce(u32) -> u32) {
        GROUP.with(|g| g.set(g.get().map(map)));
    }

    fn word(b: &[u8], at: usize) -> Option<u32> {
        let bytes = b.get(at..at + 4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// The first group of a FUSE_EXT_GROUPS extension among `ext`
    /// (`fuse_ext_header { size, type }` records, 8-byte aligned).
    pub(crate) fn parse(mut ext: &[u8]) -> Option<u32> {
        while ext.len() >= 8 {
            let size = word(ext, 0)? as usize;
            if size < 8 || size % 8 != 0 || size > ext.len() {
                return None;
            }
            if word(ext, 4)? == FUSE_EXT_GROUPS {
                // fuse_supp_groups { nr_groups, groups[] }
                let nr = word(ext, 8)? as usize;
                return if nr >= 1 && 12 + 4 * nr <= size {
                    word(ext, 12)
                } else {
                    None
                };
            }
            ext = &ext[size..];
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::parse;

        #[test]
        fn groups_extension() {
            let mut e = Vec::new();
            for w in [16u32, 32, 1, 2000] {
                e.extend_from_slice(&w.to_le_bytes());
            }
            assert_eq!(parse(&e), Some(2000));
            // Another extension first, then groups.
            let mut two = Vec::new();
            for w in [8u32, 1] {
                two.extend_from_slice(&w.to_le_bytes());
            }
            two.extend_from_slice(&e);
            assert_eq!(parse(&two), Some(2000));
            // Malformed: sizes that lie, no groups.
            for bad in [&e[..12], &[0u8; 8][..], &[]] {
                assert_eq!(parse(bad), None);
            }
            let mut zero = e.clone();
            zero[8..12].copy_from_slice(&0u32.to_le_bytes());
            assert_eq!(parse(&zero), None);
        }
    }
}

/// Maximum buffer size of FUSE requests.
#[cfg(target_os = "linux")]
pub const MAX_BUFFER_SIZE: u32 = 1 << 20;
/// Maximum buffer size of FUSE requests.
#[cfg(target_os = "macos")]
pub const MAX_BUFFER_SIZE: u32 = 1 << 25;
const MIN_READ_BUFFER: u32 = 8192;
const BUFFER_HEADER_SIZE: u32 = 0x1000;
const DIRENT_PADDING: [u8; 8] = [0; 8];

/// Maximum number of pages required for FUSE requests.
pub const MAX_REQ_PAGES: u16 = 256; // 1MB

/// Fuse Server to handle requests from the Fuse client and vhost user master.
pub struct Server<F: FileSystem + Sync> {
    fs: F,
    vers: ArcSwap<ServerVersion>,
}

impl<F: FileSystem + Sync> Server<F> {
    /// Create a Server instance from a filesystem driver object.
    pub fn new(fs: F) -> Server<F> {
        Server {
            fs,
            vers: ArcSwap::new(Arc::new(ServerVersion {
                major: KERNEL_VERSION,
                minor: KERNEL_MINOR_VERSION,
            })),
        }
    }
}

struct ZcReader<'a, S: BitmapSlice = ()>(Reader<'a, S>);

impl<S: BitmapSlice> ZeroCopyReader for ZcReader<'_, S> {
    fn read_to(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        self.0.read_to_at(f, count, off)
    }
}

impl<S: BitmapSlice> io::Read for ZcReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

struct ZcWriter<'a, S: BitmapSlice = ()>(Writer<'a, S>);

impl<S: BitmapSlice> ZeroCopyWriter for ZcWriter<'_, S> {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        self.0.write_from_at(f, count, off)
    }

    fn available_bytes(&self) -> usize {
        self.0.available_bytes()
    }
}

impl<S: BitmapSlice> io::Write for ZcWriter<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[allow(dead_code)]
struct ServerVersion {
    major: u32,
    minor: u32,
}

struct ServerUtil();

impl ServerUtil {
    fn get_message_body<S: BitmapSlice>(
        r: &mut Reader<'_, S>,
        in_header: &InHeader,
        sub_hdr_sz: usize,
    ) -> Result<Vec<u8>> {
        // Ferry: request extensions (`total_extlen`, in 8-byte units, the
        // low half of what this library calls padding) follow the body.
        let ext_len = (in_header.padding & 0xffff) as usize * 8;
        let len = (in_header.len as usize)
            .checked_sub(size_of::<InHeader>())
            .and_then(|l| l.checked_sub(sub_hdr_sz))
            .and_then(|l| l.checked_sub(ext_len))
            .ok_or(Error::InvalidHeaderLength)?;

        // Allocate buffer without zeroing out the content for performance.
        let mut buf = Vec::<u8>::with_capacity(len);
        // It's safe because read_exact() is called to fill all the allocated buffer.
        #[allow(clippy::uninit_vec)]
        unsafe {
            buf.set_len(len)
        };
        r.read_exact(&mut buf).map_err(Error::DecodeMessage)?;
        if ext_len > 0 {
            let mut ext = vec![0u8; ext_len];
            r.read_exact(&mut ext).map_err(Error::DecodeMessage)?;
            supp_group::set(supp_group::parse(&ext));
        }

        Ok(buf)
    }

    fn extract_two_cstrs(buf: &[u8]) -> Result<(&CStr, &CStr)> {
        if let Some(mut pos) = buf.iter().position(|x| *x == 0) {
            let first = CStr::from_bytes_with_nul(&buf[0..=pos]).map_err(Error::InvalidCString)?;
            pos += 1;
            if pos < buf.len() {
                return Ok((first, bytes_to_cstr(&buf[pos..])?));
            }
        }

        Err(Error::DecodeMessage(std::io::Error::from_raw_os_error(
            libc::EINVAL,
        )))
    }
}

/// Provide concrete backend filesystem a way to catch information/metrics from fuse.
pub trait MetricsHook {
    /// `collect()` will be invoked before the real request is processed
    fn collect(&self, ih: &InHeader);
    /// `release()` will be invoked after the real request is processed
    fn release(&self, oh: Option<&OutHeader>);
}

struct SrvContext<'a, F, S: BitmapSlice = ()> {
    in_header: InHeader,
    context: Context,
    r: Reader<'a, S>,
    w: Writer<'a, S>,
    phantom: PhantomData<F>,
    phantom2: PhantomData<S>,
}

impl<'a, F: FileSystem, S: BitmapSlice> SrvContext<'a, F, S> {
    fn new(in_header: InHeader, r: Reader<'a, S>, w: Writer<'a, S>) -> Self {
        let context = Context::from(&in_header);

        SrvContext {
            in_header,
            context,
            r,
            w,
            phantom: PhantomData,
            phantom2: PhantomData,
        }
    }

    fn context(&self) -> &Context {
        &self.context
    }

    fn unique(&self) -> u64 {
        self.in_header.unique
    }

    fn nodeid(&self) -> F::Inode {
        self.in_header.nodeid.into()
    }

    fn take_reader(&mut self) -> Reader<'a, S> {
        let mut reader = Reader::default();

        std::mem::swap(&mut self.r, &mut reader);

        reader
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "fusedev")]
    use crate::transport::FuseBuf;

    #[test]
    fn test_extract_cstrs() {
        assert_eq!(
            ServerUtil::extract_two_cstrs(&[0x1u8, 0x2u8, 0x0, 0x3, 0x0]).unwrap(),
            (
                CStr::from_bytes_with_nul(&[0x1u8, 0x2u8, 0x0]).unwrap(),
                CStr::from_bytes_with_nul(&[0x3u8, 0x0]).unwrap(),
            )
        );
        assert_eq!(
            ServerUtil::extract_two_cstrs(&[0x1u8, 0x2u8, 0x0, 0x3, 0x0, 0x0]).unwrap(),
            (
                CStr::from_bytes_with_nul(&[0x1u8, 0x2u8, 0x0]).unwrap(),
                CStr::from_bytes_with_nul(&[0x3u8, 0x0]).unwrap(),
            )
        );
        assert_eq!(
            ServerUtil::extract_two_cstrs(&[0x1u8, 0x2u8, 0x0, 0x3, 0x0, 0x4]).unwrap(),
            (
                CStr::from_bytes_with_nul(&[0x1u8, 0x2u8, 0x0]).unwrap(),
                CStr::from_bytes_with_nul(&[0x3u8, 0x0]).unwrap(),
            )
        );
        assert_eq!(
            ServerUtil::extract_two_cstrs(&[0x1u8, 0x2u8, 0x0, 0x0, 0x4]).unwrap(),
            (
                CStr::from_bytes_with_nul(&[0x1u8, 0x2u8, 0x0]).unwrap(),
                CStr::from_bytes_with_nul(&[0x0]).unwrap(),
            )
        );

        ServerUtil::extract_two_cstrs(&[0x1u8, 0x2u8, 0x0, 0x3]).unwrap_err();
        ServerUtil::extract_two_cstrs(&[0x1u8, 0x2u8, 0x0]).unwrap_err();
        ServerUtil::extract_two_cstrs(&[0x1u8, 0x2u8]).unwrap_err();
    }

    #[cfg(feature = "fusedev")]
    #[test]
    fn test_get_message_body() {
        let mut read_buf = [0u8; 4096];

        let mut r = Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut read_buf)).unwrap();
        let in_header = InHeader {
            len: 0x1000,
            ..Default::default()
        };
        let buf = ServerUtil::get_message_body(&mut r, &in_header, 0).unwrap();
        assert_eq!(buf.len(), 0x1000 - size_of::<InHeader>());

        let mut r = Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut read_buf)).unwrap();
        let in_header = InHeader {
            len: 0x1000,
            ..Default::default()
        };
        let buf = ServerUtil::get_message_body(&mut r, &in_header, 0x100).unwrap();
        assert_eq!(buf.len(), 0x1000 - size_of::<InHeader>() - 0x100);

        let mut r = Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut read_buf)).unwrap();
        let in_header = InHeader {
            len: 0x1000,
            ..Default::default()
        };
        // shoutld fail because of invalid sub header size
        assert!(ServerUtil::get_message_body(&mut r, &in_header, 0x1000).is_err());

        let mut r = Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut read_buf)).unwrap();
        let in_header = InHeader {
            len: 0x1000,
            ..Default::default()
        };
        // shoutld fail because of invalid sub header size
        assert!(ServerUtil::get_message_body(&mut r, &in_header, 0x1001).is_err());
    }
}
