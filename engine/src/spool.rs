//! The on-disk spool: where the writer's operations wait while the database cannot take them.
//!
//! Append-only segment files (`<n>.seg`) of records `[length u32][crc32 u32][body]`, read back in
//! order. The read position is saved after each batch the database committed; a crash between the
//! commit and the save writes that batch again, which the default templates ignore (`msgid` is
//! unique, deletes and delivery records are idempotent). A record whose checksum fails ends what
//! is read of its segment (a torn write at the tail), and is reported.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::message::{DeliveryRecord, Message};
use crate::private_files;
use crate::store::AckedMessage;

/// A segment is closed and a new one started beyond this size, or a quarter of the spool's limit
/// if that is smaller, so that `DropOldest` has segments to drop.
const SEGMENT_BYTES: u64 = 16 << 20;

/// One spooled operation of the writer.
#[derive(Clone, Debug, PartialEq)]
pub enum SpoolOp {
    Insert(Message),
    Delete(AckedMessage),
    Delivered(DeliveryRecord),
}

/// What to drop when the spool is full (`spool_full`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SpoolFull {
    /// Refuse what comes now; the spool keeps the oldest.
    #[default]
    DropNewest,
    /// Remove the oldest segment to make room.
    DropOldest,
}

/// Where reading stands: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpoolPos {
    pub segment: u64,
    pub offset: u64,
}

pub struct Spool {
    dir: PathBuf,
    /// Segment numbers on disk, oldest first; the last is the one appended to.
    segments: Vec<u64>,
    tail: Option<File>,
    tail_len: u64,
    read: SpoolPos,
    /// Bytes on disk from the read position on.
    unread_bytes: u64,
    max_bytes: u64,
    segment_bytes: u64,
    full: SpoolFull,
    /// Held for the spool's lifetime: one process per spool directory.
    _lock: File,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, with what an earlier run left in it.
    pub fn open(dir: &Path, max_bytes: u64, full: SpoolFull) -> io::Result<Spool> {
        private_files::create_dir_all(dir)?;
        let lock = private_files::options().create(true).truncate(false).write(true).open(dir.join("lock"))?;
        if let Err(e) = lock.try_lock() {
            return Err(io::Error::other(format!("it is in use by another process ({e})")));
        }
        let mut segments: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        segments.sort_unstable();
        let read = fs::read_to_string(dir.join("read.pos"))
            .ok()
            .and_then(|t| {
                let (s, o) = t.trim().split_once(' ')?;
                Some(SpoolPos { segment: s.parse().ok()?, offset: o.parse().ok()? })
            })
            .filter(|p| segments.contains(&p.segment))
            .unwrap_or(SpoolPos { segment: segments.first().copied().unwrap_or(1), offset: 0 });
        let segment_bytes = SEGMENT_BYTES.min(max_bytes / 4).max(1);
        let mut spool = Spool {
            dir: dir.to_owned(),
            segments,
            tail: None,
            tail_len: 0,
            read,
            unread_bytes: 0,
            max_bytes,
            segment_bytes,
            full,
            _lock: lock,
        };
        spool.segments.retain(|s| *s >= read.segment);
        spool.unread_bytes = spool.segments.iter().map(|s| spool.len_of(*s)).sum::<u64>() - read.offset;
        Ok(spool)
    }

    fn path(&self, segment: u64) -> PathBuf {
        self.dir.join(format!("{segment:010}.seg"))
    }

    fn len_of(&self, segment: u64) -> u64 {
        fs::metadata(self.path(segment)).map_or(0, |m| m.len())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when nothing is waiting to be read.
    pub fn is_empty(&self) -> bool {
        self.unread_bytes == 0
    }

    pub fn unread_bytes(&self) -> u64 {
        self.unread_bytes
    }

    /// The position just after the last record appended.
    pub fn end(&self) -> SpoolPos {
        match self.segments.last() {
            Some(s) => SpoolPos { segment: *s, offset: self.len_of_tail(*s) },
            None => self.read,
        }
    }

    fn len_of_tail(&self, segment: u64) -> u64 {
        if self.tail.is_some() {
            self.tail_len
        } else {
            self.len_of(segment)
        }
    }

    /// Appends operations; returns how many were dropped because the spool is full (the new ones
    /// with `DropNewest`, `dropped_oldest` counts what `DropOldest` removed, in bytes). All or
    /// nothing: when a write fails (a full disk, an I/O error), what this call wrote is taken back,
    /// so that no fragment sits in front of later records.
    pub fn append(&mut self, ops: &[SpoolOp]) -> io::Result<AppendOutcome> {
        let last = self.segments.last().copied();
        let tail_len = self.tail.as_ref().map(|_| self.tail_len);
        let unread = self.unread_bytes;
        let mut outcome = AppendOutcome::default();
        match self.append_all(ops, &mut outcome) {
            Ok(()) => Ok(outcome),
            Err(e) => {
                if let Err(undo) = self.take_back(last, tail_len) {
                    // The next records go to a new segment; the reader stops at the fragment
                    // (a record cut short) and goes on with that segment.
                    tracing::error!(error = %undo, spool_dir = %self.dir.display(), "removing a failed spool append failed");
                }
                self.unread_bytes = unread.saturating_sub(outcome.dropped_oldest_bytes);
                Err(e)
            }
        }
    }

    /// Removes what was appended after segment `last` had `tail_len` bytes (`None`: no open tail,
    /// the append started a new segment). The next append starts a new segment.
    fn take_back(&mut self, last: Option<u64>, tail_len: Option<u64>) -> io::Result<()> {
        self.tail = None;
        while let Some(&newer) = self.segments.last().filter(|s| Some(**s) > last) {
            self.segments.pop();
            fs::remove_file(self.path(newer))?;
        }
        match (last, tail_len) {
            (Some(segment), Some(len)) if self.segments.contains(&segment) => {
                fs::OpenOptions::new().write(true).open(self.path(segment))?.set_len(len)
            }
            _ => Ok(()),
        }
    }

    fn append_all(&mut self, ops: &[SpoolOp], outcome: &mut AppendOutcome) -> io::Result<()> {
        for op in ops {
            let record = encode_record(op);
            let size = record.len() as u64;
            while self.unread_bytes + size > self.max_bytes {
                if self.full == SpoolFull::DropOldest && self.segments.len() > 1 {
                    outcome.dropped_oldest_bytes += self.drop_oldest_segment()?;
                } else {
                    break;
                }
            }
            if self.unread_bytes + size > self.max_bytes {
                outcome.dropped_newest += 1;
                continue;
            }
            if self.tail.is_none() || (self.tail_len > 0 && self.tail_len + size > self.segment_bytes) {
                self.start_segment()?;
            }
            self.tail.as_mut().expect("a tail segment").write_all(&record)?;
            self.tail_len += size;
            self.unread_bytes += size;
        }
        Ok(())
    }

    fn start_segment(&mut self) -> io::Result<()> {
        let next = self.segments.last().map_or(self.read.segment.max(1), |s| s + 1);
        let file = private_files::options().create(true).append(true).open(self.path(next))?;
        // The new segment's name must survive a power cut as its records do (a `sync` PUBACK
        // waits for them).
        sync_dir(&self.dir)?;
        if let Some(old) = self.tail.take() {
            old.sync_data()?;
        }
        self.segments.push(next);
        self.tail = Some(file);
        self.tail_len = 0;
        Ok(())
    }

    fn drop_oldest_segment(&mut self) -> io::Result<u64> {
        let oldest = self.segments.remove(0);
        let bytes = self.len_of(oldest) - if oldest == self.read.segment { self.read.offset } else { 0 };
        fs::remove_file(self.path(oldest))?;
        self.unread_bytes -= bytes;
        self.read = SpoolPos { segment: self.segments[0], offset: 0 };
        self.save_read()?;
        Ok(bytes)
    }

    /// Makes what was appended durable.
    pub fn sync(&mut self) -> io::Result<()> {
        match &self.tail {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Up to `max` operations from the read position, and the position after them; nothing is
    /// consumed until [`Spool::consumed`].
    pub fn read(&self, max: usize) -> io::Result<(Vec<SpoolOp>, SpoolPos)> {
        let mut ops = Vec::new();
        let mut pos = self.read;
        while ops.len() < max {
            let Some(i) = self.segments.iter().position(|s| *s == pos.segment) else { break };
            let mut file = BufReader::new(File::open(self.path(pos.segment))?);
            file.seek(SeekFrom::Start(pos.offset))?;
            loop {
                if ops.len() >= max {
                    return Ok((ops, pos));
                }
                match read_record(&mut file)? {
                    Record::Op(op, size) => {
                        ops.push(op);
                        pos.offset += size;
                    }
                    Record::End => break,
                    Record::Corrupt => {
                        tracing::error!(segment = %self.path(pos.segment).display(), offset = pos.offset, "a spool record fails its checksum; the rest of this segment is skipped");
                        pos.offset = self.len_of(pos.segment);
                        break;
                    }
                }
            }
            match self.segments.get(i + 1) {
                Some(next) => pos = SpoolPos { segment: *next, offset: 0 },
                None => break,
            }
        }
        Ok((ops, pos))
    }

    /// What was read up to `pos` is in the database: delete the segments behind it, save it.
    pub fn consumed(&mut self, pos: SpoolPos) -> io::Result<()> {
        let mut freed = 0;
        while self.segments.first().is_some_and(|s| *s < pos.segment) {
            let s = self.segments.remove(0);
            freed += self.len_of(s) - if s == self.read.segment { self.read.offset } else { 0 };
            fs::remove_file(self.path(s))?;
        }
        if pos.segment == self.read.segment {
            freed += pos.offset - self.read.offset;
        } else {
            freed += pos.offset;
        }
        self.unread_bytes -= freed.min(self.unread_bytes);
        self.read = pos;
        if self.is_empty() && self.segments.len() == 1 {
            // Everything is in the database: start over with an empty segment file.
            let only = self.segments[0];
            self.tail = None;
            fs::remove_file(self.path(only))?;
            self.segments.clear();
            self.read = SpoolPos { segment: only + 1, offset: 0 };
        }
        self.save_read()
    }

    /// Replaces `read.pos` atomically and durably: a power cut leaves the old or the new one.
    fn save_read(&self) -> io::Result<()> {
        let tmp = self.dir.join("read.pos.tmp");
        let mut file = private_files::options().write(true).create(true).truncate(true).open(&tmp)?;
        file.write_all(format!("{} {}\n", self.read.segment, self.read.offset).as_bytes())?;
        file.sync_data()?;
        fs::rename(tmp, self.dir.join("read.pos"))?;
        sync_dir(&self.dir)
    }
}

/// Makes the directory's entries (a new file, a rename) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub dropped_newest: u64,
    pub dropped_oldest_bytes: u64,
}

enum Record {
    Op(SpoolOp, u64),
    End,
    Corrupt,
}

fn read_record(r: &mut impl Read) -> io::Result<Record> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Record::End),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
    let mut body = vec![0u8; len];
    match r.read_exact(&mut body) {
        Ok(()) => {}
        // A record cut short by a crash: the end of what was written.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(Record::End),
        Err(e) => return Err(e),
    }
    if crc32(&body) != crc {
        return Ok(Record::Corrupt);
    }
    Ok(decode(&body).map_or(Record::Corrupt, |op| Record::Op(op, 8 + len as u64)))
}

fn encode_record(op: &SpoolOp) -> Vec<u8> {
    let mut body = Vec::new();
    let put = |b: &mut Vec<u8>, bytes: &[u8]| {
        b.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        b.extend_from_slice(bytes);
    };
    match op {
        SpoolOp::Insert(m) => {
            body.push(1);
            for s in [&m.msgid, &m.from, &m.topic] {
                put(&mut body, s.as_bytes());
            }
            body.extend_from_slice(&[m.qos, u8::from(m.retain)]);
            put(&mut body, &m.payload);
            body.extend_from_slice(&m.timestamp_ms.to_le_bytes());
            match m.expiry_ms {
                Some(e) => {
                    body.push(1);
                    body.extend_from_slice(&e.to_le_bytes());
                }
                None => body.push(0),
            }
            match &m.properties {
                Some(p) => {
                    body.push(1);
                    put(&mut body, p.as_bytes());
                }
                None => body.push(0),
            }
        }
        SpoolOp::Delete(a) => {
            body.push(2);
            for s in [&a.msgid, &a.from, &a.topic] {
                put(&mut body, s.as_bytes());
            }
        }
        SpoolOp::Delivered(d) => {
            body.push(3);
            for s in [&d.client_id, &d.msgid] {
                put(&mut body, s.as_bytes());
            }
        }
    }
    let mut record = Vec::with_capacity(8 + body.len());
    record.extend_from_slice(&(body.len() as u32).to_le_bytes());
    record.extend_from_slice(&crc32(&body).to_le_bytes());
    record.extend_from_slice(&body);
    record
}

fn decode(body: &[u8]) -> Option<SpoolOp> {
    struct Cursor<'a>(&'a [u8]);
    impl Cursor<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn byte(&mut self) -> Option<u8> {
            self.take(1).map(|b| b[0])
        }
        fn i64(&mut self) -> Option<i64> {
            Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
        fn bytes(&mut self) -> Option<&[u8]> {
            let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
            self.take(len)
        }
        fn string(&mut self) -> Option<String> {
            String::from_utf8(self.bytes()?.to_vec()).ok()
        }
    }
    let mut c = Cursor(body);
    Some(match c.byte()? {
        1 => {
            let (msgid, from, topic) = (c.string()?, c.string()?, c.string()?);
            let (qos, retain) = (c.byte()?, c.byte()? != 0);
            let payload = Bytes::from(c.bytes()?.to_vec());
            let timestamp_ms = c.i64()?;
            let expiry_ms = if c.byte()? == 1 { Some(c.i64()?) } else { None };
            let properties = if c.byte()? == 1 { Some(c.string()?) } else { None };
            SpoolOp::Insert(Message { msgid, from, topic, qos, retain, payload, timestamp_ms, expiry_ms, properties })
        }
        2 => SpoolOp::Delete(AckedMessage { msgid: c.string()?, from: c.string()?, topic: c.string()? }),
        3 => SpoolOp::Delivered(DeliveryRecord { client_id: c.string()?, msgid: c.string()? }),
        _ => return None,
    })
}

/// CRC-32 (IEEE 802.3), bitwise: the spool's records are small and few compared with the database
/// round trips they wait for.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert(i: usize) -> SpoolOp {
        SpoolOp::Insert(Message {
            msgid: format!("m{i}"),
            from: "p".into(),
            topic: "t/x".into(),
            qos: 1,
            retain: i.is_multiple_of(2),
            payload: Bytes::from(vec![i as u8; 100]),
            timestamp_ms: i as i64,
            expiry_ms: i.is_multiple_of(3).then_some(99),
            properties: i.is_multiple_of(5).then(|| "{\"content_type\":\"x\"}".to_owned()),
        })
    }

    #[test]
    fn one_process_per_spool_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path(), 1 << 30, SpoolFull::DropNewest).unwrap();
        let second = Spool::open(dir.path(), 1 << 30, SpoolFull::DropNewest);
        assert!(second.is_err_and(|e| e.to_string().contains("in use by another process")));
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn operations_come_back_in_order_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let ops: Vec<SpoolOp> = (0..50)
            .map(insert)
            .chain([
                SpoolOp::Delete(AckedMessage { msgid: "m1".into(), from: String::new(), topic: String::new() }),
                SpoolOp::Delivered(DeliveryRecord { client_id: "c".into(), msgid: "m2".into() }),
            ])
            .collect();
        let mut spool = Spool::open(dir.path(), 1 << 30, SpoolFull::DropNewest).unwrap();
        spool.append(&ops).unwrap();
        spool.sync().unwrap();
        let (first, pos) = spool.read(20).unwrap();
        assert_eq!(first, ops[..20]);
        spool.consumed(pos).unwrap();
        drop(spool);
        let spool = Spool::open(dir.path(), 1 << 30, SpoolFull::DropNewest).unwrap();
        let (rest, _) = spool.read(1000).unwrap();
        assert_eq!(rest, ops[20..], "a restart goes on where the database left off");
    }

    #[test]
    fn a_drained_spool_is_empty_and_takes_more() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30, SpoolFull::DropNewest).unwrap();
        spool.append(&[insert(1)]).unwrap();
        let (ops, pos) = spool.read(10).unwrap();
        assert_eq!(ops.len(), 1);
        spool.consumed(pos).unwrap();
        assert!(spool.is_empty());
        spool.append(&[insert(2)]).unwrap();
        assert_eq!(spool.read(10).unwrap().0, [insert(2)]);
    }

    #[test]
    fn a_torn_tail_ends_the_read_and_a_bad_checksum_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30, SpoolFull::DropNewest).unwrap();
        spool.append(&[insert(1), insert(2)]).unwrap();
        spool.sync().unwrap();
        drop(spool);
        let seg = dir.path().join(format!("{:010}.seg", 1));
        let mut bytes = fs::read(&seg).unwrap();
        bytes.truncate(bytes.len() - 10);
        fs::write(&seg, &bytes).unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, SpoolFull::DropNewest).unwrap();
        assert_eq!(spool.read(10).unwrap().0, [insert(1)], "the torn second record is not read");
        drop(spool);
        bytes[20] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let spool = Spool::open(dir.path(), 1 << 30, SpoolFull::DropNewest).unwrap();
        assert!(spool.read(10).unwrap().0.is_empty(), "a record failing its checksum is not returned");
    }

    #[test]
    fn a_full_spool_drops_the_newest_or_the_oldest() {
        let record = encode_record(&insert(0)).len() as u64;
        let dir = tempfile::tempdir().unwrap();
        let mut newest = Spool::open(dir.path(), record * 3, SpoolFull::DropNewest).unwrap();
        let out = newest.append(&(0..5).map(insert).collect::<Vec<_>>()).unwrap();
        assert_eq!(out.dropped_newest, 2);
        assert_eq!(newest.read(10).unwrap().0, (0..3).map(insert).collect::<Vec<_>>());

        let dir = tempfile::tempdir().unwrap();
        let mut oldest = Spool::open(dir.path(), record * 8, SpoolFull::DropOldest).unwrap();
        let ops: Vec<SpoolOp> = (0..20).map(insert).collect();
        let out = oldest.append(&ops).unwrap();
        assert!(out.dropped_oldest_bytes > 0, "{out:?}");
        let (kept, _) = oldest.read(usize::MAX).unwrap();
        assert_eq!(kept.last(), ops.last(), "the newest are kept");
        assert!(kept.len() < ops.len());
    }
}
