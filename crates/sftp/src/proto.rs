//! SFTP version 3 wire format (draft-ietf-secsh-filexfer-02 plus OpenSSH's
//! extensions), with no I/O: bytes in, typed packets out, and back.
//!
//! Handles and names stay raw bytes end to end. russh-sftp decodes both as
//! lossy UTF-8, which corrupts binary handles (OpenSSH's past 128 open files)
//! and non-UTF-8 file names; a codec of our own is small and avoids both.

use std::fmt;

/// The SFTP version robosync speaks (draft-ietf-secsh-filexfer-02).
pub const VERSION: u32 = 3;

// Packet types.
/// Packet type `SSH_FXP_INIT`.
pub const FXP_INIT: u8 = 1;
/// Packet type `SSH_FXP_VERSION`.
pub const FXP_VERSION: u8 = 2;
/// Packet type `SSH_FXP_OPEN`.
pub const FXP_OPEN: u8 = 3;
/// Packet type `SSH_FXP_CLOSE`.
pub const FXP_CLOSE: u8 = 4;
/// Packet type `SSH_FXP_READ`.
pub const FXP_READ: u8 = 5;
/// Packet type `SSH_FXP_WRITE`.
pub const FXP_WRITE: u8 = 6;
/// Packet type `SSH_FXP_LSTAT`.
pub const FXP_LSTAT: u8 = 7;
/// Packet type `SSH_FXP_FSTAT`.
pub const FXP_FSTAT: u8 = 8;
/// Packet type `SSH_FXP_SETSTAT`.
pub const FXP_SETSTAT: u8 = 9;
/// Packet type `SSH_FXP_FSETSTAT`.
pub const FXP_FSETSTAT: u8 = 10;
/// Packet type `SSH_FXP_OPENDIR`.
pub const FXP_OPENDIR: u8 = 11;
/// Packet type `SSH_FXP_READDIR`.
pub const FXP_READDIR: u8 = 12;
/// Packet type `SSH_FXP_REMOVE`.
pub const FXP_REMOVE: u8 = 13;
/// Packet type `SSH_FXP_MKDIR`.
pub const FXP_MKDIR: u8 = 14;
/// Packet type `SSH_FXP_RMDIR`.
pub const FXP_RMDIR: u8 = 15;
/// Packet type `SSH_FXP_REALPATH`.
pub const FXP_REALPATH: u8 = 16;
/// Packet type `SSH_FXP_STAT`.
pub const FXP_STAT: u8 = 17;
/// Packet type `SSH_FXP_RENAME`.
pub const FXP_RENAME: u8 = 18;
/// Packet type `SSH_FXP_READLINK`.
pub const FXP_READLINK: u8 = 19;
/// Packet type `SSH_FXP_SYMLINK`.
pub const FXP_SYMLINK: u8 = 20;
/// Packet type `SSH_FXP_STATUS`.
pub const FXP_STATUS: u8 = 101;
/// Packet type `SSH_FXP_HANDLE`.
pub const FXP_HANDLE: u8 = 102;
/// Packet type `SSH_FXP_DATA`.
pub const FXP_DATA: u8 = 103;
/// Packet type `SSH_FXP_NAME`.
pub const FXP_NAME: u8 = 104;
/// Packet type `SSH_FXP_ATTRS`.
pub const FXP_ATTRS: u8 = 105;
/// Packet type `SSH_FXP_EXTENDED`.
pub const FXP_EXTENDED: u8 = 200;
/// Packet type `SSH_FXP_EXTENDED_REPLY`.
pub const FXP_EXTENDED_REPLY: u8 = 201;

// Open flags.
/// OPEN flag `SSH_FXF_READ`: open for reading.
pub const FXF_READ: u32 = 0x01;
/// OPEN flag `SSH_FXF_WRITE`: open for writing.
pub const FXF_WRITE: u32 = 0x02;
/// OPEN flag `SSH_FXF_APPEND`: writes go to the end.
pub const FXF_APPEND: u32 = 0x04;
/// OPEN flag `SSH_FXF_CREAT`: create the file if missing.
pub const FXF_CREAT: u32 = 0x08;
/// OPEN flag `SSH_FXF_TRUNC`: truncate an existing file.
pub const FXF_TRUNC: u32 = 0x10;
/// OPEN flag `SSH_FXF_EXCL`: fail if the file exists (with CREAT).
pub const FXF_EXCL: u32 = 0x20;

// Status codes.
/// Status `SSH_FX_OK`: success.
pub const FX_OK: u32 = 0;
/// Status `SSH_FX_EOF`: end of file or of a directory.
pub const FX_EOF: u32 = 1;
/// Status `SSH_FX_NO_SUCH_FILE`: no such file.
pub const FX_NO_SUCH_FILE: u32 = 2;
/// Status `SSH_FX_PERMISSION_DENIED`: permission denied.
pub const FX_PERMISSION_DENIED: u32 = 3;
/// Status `SSH_FX_FAILURE`: any other failure.
pub const FX_FAILURE: u32 = 4;
/// Status `SSH_FX_BAD_MESSAGE`: a malformed request.
pub const FX_BAD_MESSAGE: u32 = 5;
/// Status `SSH_FX_NO_CONNECTION`: no connection (client-side).
pub const FX_NO_CONNECTION: u32 = 6;
/// Status `SSH_FX_CONNECTION_LOST`: connection lost (client-side).
pub const FX_CONNECTION_LOST: u32 = 7;
/// Status `SSH_FX_OP_UNSUPPORTED`: an operation the server does not support.
pub const FX_OP_UNSUPPORTED: u32 = 8;

const ATTR_SIZE: u32 = 0x01;
const ATTR_UIDGID: u32 = 0x02;
const ATTR_PERMISSIONS: u32 = 0x04;
const ATTR_ACMODTIME: u32 = 0x08;
const ATTR_EXTENDED: u32 = 0x8000_0000;

/// Largest packet we accept from a server; OpenSSH's own limit is 256 KiB.
/// Anything bigger is a broken or hostile peer, not data.
pub const MAX_INBOUND_PACKET: u32 = 1024 * 1024;

/// File attributes; absent fields are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    /// Bytes (files).
    pub size: Option<u64>,
    /// Owner and group ids.
    pub uid_gid: Option<(u32, u32)>,
    /// Full st_mode, including the file type bits.
    pub permissions: Option<u32>,
    /// (atime, mtime) in whole seconds.
    pub times: Option<(u32, u32)>,
}

/// Mask of the file-type bits of `permissions`.
pub const S_IFMT: u32 = 0o170000;
/// File type: directory.
pub const S_IFDIR: u32 = 0o040000;
/// File type: regular file.
pub const S_IFREG: u32 = 0o100000;
/// File type: symlink.
pub const S_IFLNK: u32 = 0o120000;

impl Attrs {
    /// The file-type bits, when the permissions are known.
    pub fn file_type(&self) -> Option<u32> {
        self.permissions.map(|p| p & S_IFMT)
    }
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type() == Some(S_IFDIR)
    }
    /// Whether it is a regular file.
    pub fn is_file(&self) -> bool {
        self.file_type() == Some(S_IFREG)
    }
    /// Whether it is a symlink.
    pub fn is_symlink(&self) -> bool {
        self.file_type() == Some(S_IFLNK)
    }
    /// The modification time (Unix seconds), when known.
    pub fn mtime(&self) -> Option<u32> {
        self.times.map(|t| t.1)
    }
}

/// One directory entry from READDIR (or the single name of REALPATH/READLINK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// The name (one component, raw bytes: the server's word, not yet trusted).
    pub filename: Vec<u8>,
    /// Its attributes.
    pub attrs: Attrs,
}

/// A decoded server reply, with its request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// STATUS: a result code and the server's message.
    Status {
        /// `FX_OK`, `FX_EOF`, … (see [`FX_OK`] and the others).
        code: u32,
        /// The server's words.
        message: String,
    },
    /// HANDLE: an opened handle (raw bytes).
    Handle(Vec<u8>),
    /// DATA: bytes read.
    Data(Vec<u8>),
    /// NAME: names (READDIR, REALPATH, READLINK).
    Name(Vec<Name>),
    /// ATTRS: attributes (STAT and the others).
    Attrs(Attrs),
    /// EXTENDED_REPLY: an extension's answer (its raw body).
    Extended(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
/// A packet that does not decode; says what was wrong.
pub struct DecodeError(pub &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed SFTP packet: {}", self.0)
    }
}

/// Builds one request packet: length prefix, type, id, then fields.
pub struct Packet {
    buf: Vec<u8>,
    /// Where this packet starts in `buf` (packets can follow one another in it).
    start: usize,
}

impl Packet {
    /// A packet of type `kind` with request id `id`.
    pub fn new(kind: u8, id: u32) -> Packet {
        Packet::after(Vec::with_capacity(64), kind, id)
    }
    /// A packet appended to `buf`, which keeps what it holds: several
    /// requests sent as one piece are built in place, not copied together.
    pub fn after(mut buf: Vec<u8>, kind: u8, id: u32) -> Packet {
        let start = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 0, kind]);
        buf.extend_from_slice(&id.to_be_bytes());
        Packet { buf, start }
    }
    /// INIT carries a version instead of a request id.
    pub fn init() -> Packet {
        let mut buf = vec![0, 0, 0, 0, FXP_INIT];
        buf.extend_from_slice(&VERSION.to_be_bytes());
        Packet { buf, start: 0 }
    }
    /// Appends a big-endian u32.
    pub fn u32(mut self, v: u32) -> Packet {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Appends a big-endian u64.
    pub fn u64(mut self, v: u64) -> Packet {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// Appends a length-prefixed string.
    pub fn bytes(mut self, v: &[u8]) -> Packet {
        self.buf.extend_from_slice(&(v.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(v);
        self
    }
    /// Appends attributes.
    pub fn attrs(mut self, a: &Attrs) -> Packet {
        let mut flags = 0;
        if a.size.is_some() {
            flags |= ATTR_SIZE;
        }
        if a.uid_gid.is_some() {
            flags |= ATTR_UIDGID;
        }
        if a.permissions.is_some() {
            flags |= ATTR_PERMISSIONS;
        }
        if a.times.is_some() {
            flags |= ATTR_ACMODTIME;
        }
        self = self.u32(flags);
        if let Some(s) = a.size {
            self = self.u64(s);
        }
        if let Some((u, g)) = a.uid_gid {
            self = self.u32(u).u32(g);
        }
        if let Some(p) = a.permissions {
            self = self.u32(p);
        }
        if let Some((at, mt)) = a.times {
            self = self.u32(at).u32(mt);
        }
        self
    }
    /// The whole packet, its length prefix filled in.
    pub fn finish(self) -> Vec<u8> {
        self.finish_before(0)
    }
    /// The packet's head, when its last `tail` bytes follow separately
    /// (a WRITE's data, sent without being copied in).
    pub fn finish_before(mut self, tail: usize) -> Vec<u8> {
        let at = self.start;
        let len = (self.buf.len() - at - 4 + tail) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self.buf
    }
}

/// A cursor over a packet body.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }
    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let (&b, rest) = self.buf.split_first().ok_or(DecodeError("short"))?;
        self.buf = rest;
        Ok(b)
    }
    /// Reads a big-endian u32.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let (a, rest) = self
            .buf
            .split_first_chunk::<4>()
            .ok_or(DecodeError("short u32"))?;
        self.buf = rest;
        Ok(u32::from_be_bytes(*a))
    }
    /// Reads a big-endian u64.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(((self.u32()? as u64) << 32) | self.u32()? as u64)
    }
    /// Reads a length-prefixed string.
    pub fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        if self.buf.len() < n {
            return Err(DecodeError("string longer than packet"));
        }
        let (a, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(a)
    }
    /// Reads attributes.
    pub fn attrs(&mut self) -> Result<Attrs, DecodeError> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.uid_gid = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_PERMISSIONS != 0 {
            a.permissions = Some(self.u32()?);
        }
        if flags & ATTR_ACMODTIME != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            for _ in 0..self.u32()? {
                self.bytes()?;
                self.bytes()?;
            }
        }
        Ok(a)
    }
    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Decodes a reply body (the bytes after the length prefix).
pub fn decode_reply(body: &[u8]) -> Result<(u32, Reply), DecodeError> {
    let mut r = Reader::new(body);
    let kind = r.u8()?;
    let id = r.u32()?;
    let reply = match kind {
        FXP_STATUS => {
            let code = r.u32()?;
            // Some servers omit the message; it is optional in practice.
            let message = if r.is_empty() {
                String::new()
            } else {
                String::from_utf8_lossy(r.bytes()?).into_owned()
            };
            Reply::Status { code, message }
        }
        FXP_HANDLE => Reply::Handle(r.bytes()?.to_vec()),
        FXP_DATA => Reply::Data(r.bytes()?.to_vec()),
        FXP_NAME => {
            let count = r.u32()?;
            // Each entry needs at least 12 bytes; refuse counts the packet cannot hold.
            if count as usize > body.len() / 12 {
                return Err(DecodeError("NAME count larger than packet"));
            }
            let mut names = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let filename = r.bytes()?.to_vec();
                let _longname = r.bytes()?;
                let attrs = r.attrs()?;
                names.push(Name { filename, attrs });
            }
            Reply::Name(names)
        }
        FXP_ATTRS => Reply::Attrs(r.attrs()?),
        FXP_EXTENDED_REPLY => Reply::Extended(r.rest().to_vec()),
        _ => return Err(DecodeError("unknown reply type")),
    };
    Ok((id, reply))
}

/// A DATA reply's head: type, request id and the data's length.
pub const DATA_HEAD: usize = 9;

/// The request id and data length of a DATA reply, from its first
/// [`DATA_HEAD`] bytes (the data can then be read apart, not copied out of
/// the body); `None` for any other reply.
pub fn data_head(head: &[u8]) -> Option<(u32, usize)> {
    let mut r = Reader::new(head.get(..DATA_HEAD)?);
    if r.u8().ok()? != FXP_DATA {
        return None;
    }
    let id = r.u32().ok()?;
    Some((id, r.u32().ok()? as usize))
}

/// Decodes a VERSION body into (version, extensions).
/// Extension names and data from a VERSION packet.
pub type ExtensionList = Vec<(String, Vec<u8>)>;

/// Decodes a VERSION packet's body: the version and the extensions advertised.
pub fn decode_version(body: &[u8]) -> Result<(u32, ExtensionList), DecodeError> {
    let mut r = Reader::new(body);
    if r.u8()? != FXP_VERSION {
        return Err(DecodeError("expected VERSION"));
    }
    let version = r.u32()?;
    let mut ext = Vec::new();
    while !r.is_empty() {
        let name = String::from_utf8_lossy(r.bytes()?).into_owned();
        let data = r.bytes()?.to_vec();
        ext.push((name, data));
    }
    Ok((version, ext))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_round_trip() {
        let a = Attrs {
            size: Some(1 << 40),
            uid_gid: None,
            permissions: Some(S_IFREG | 0o640),
            times: Some((1, 1_700_000_000)),
        };
        let pkt = Packet::new(FXP_ATTRS, 7).attrs(&a).finish();
        let (id, reply) = decode_reply(&pkt[4..]).unwrap();
        assert_eq!(id, 7);
        assert_eq!(reply, Reply::Attrs(a));
    }

    #[test]
    fn names_keep_raw_bytes() {
        let pkt = Packet::new(FXP_NAME, 9)
            .u32(1)
            .bytes(b"caf\xe9")
            .bytes(b"long")
            .attrs(&Attrs::default())
            .finish();
        let (_, reply) = decode_reply(&pkt[4..]).unwrap();
        match reply {
            Reply::Name(n) => assert_eq!(n[0].filename, b"caf\xe9"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_packets_are_errors_not_panics() {
        let pkt = Packet::new(FXP_NAME, 9)
            .u32(2)
            .bytes(b"a")
            .bytes(b"b")
            .attrs(&Attrs::default())
            .finish();
        for cut in 0..pkt.len() - 4 {
            assert!(decode_reply(&pkt[4..4 + cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn absurd_name_count_is_refused() {
        let pkt = Packet::new(FXP_NAME, 1).u32(u32::MAX).finish();
        assert!(decode_reply(&pkt[4..]).is_err());
    }

    #[test]
    fn packets_built_back_to_back_and_with_a_separate_tail() {
        // Two packets in one buffer: each length prefix covers its own packet.
        let first = Packet::new(FXP_CLOSE, 1).bytes(b"h").finish();
        let both = Packet::after(first.clone(), FXP_CLOSE, 2)
            .bytes(b"hh")
            .finish();
        assert_eq!(&both[..first.len()], &first[..]);
        let second = &both[first.len()..];
        let len = u32::from_be_bytes(second[..4].try_into().unwrap()) as usize;
        assert_eq!(len, second.len() - 4);
        assert_eq!(second[4], FXP_CLOSE);
        // A WRITE whose data travels apart: head + tail = the inline packet.
        let data = b"0123456789";
        let inline = Packet::new(FXP_WRITE, 3)
            .bytes(b"h")
            .u64(0)
            .bytes(data)
            .finish();
        let mut split = Packet::new(FXP_WRITE, 3)
            .bytes(b"h")
            .u64(0)
            .u32(data.len() as u32)
            .finish_before(data.len());
        split.extend_from_slice(data);
        assert_eq!(split, inline);
    }
}
