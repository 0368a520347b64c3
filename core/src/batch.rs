//! Kafka RecordBatch v2 (magic 2): the unit Sluice receives, stores and serves.
//!
//! ```text
//!  offset  size  field                    covered by CRC
//!  0       8     baseOffset               no   (assigned by the broker, in place)
//!  8       4     batchLength              no   (bytes after this field)
//!  12      4     partitionLeaderEpoch     no   (stamped by the broker, in place)
//!  16      1     magic (= 2)              no
//!  17      4     crc (CRC-32C)            no
//!  21      2     attributes               yes  bits 0-2 codec, 3 timestamp type,
//!                                              4 transactional, 5 control, 6 delete horizon
//!  23      4     lastOffsetDelta          yes
//!  27      8     baseTimestamp            yes
//!  35      8     maxTimestamp             yes
//!  43      8     producerId               yes
//!  51      2     producerEpoch            yes
//!  53      4     baseSequence             yes
//!  57      4     recordsCount             yes
//!  61      ..    records (compressed as a whole when codec != 0)
//! ```
//! All integers are big-endian. Records inside use zig-zag varints:
//! `length, attributes:i8, timestampDelta:varlong, offsetDelta:varint, keyLength:varint, key,
//! valueLength:varint, value, headerCount:varint, [headerKeyLength, headerKey,
//! headerValueLength, headerValue]*`.

use std::io::Read;

use crate::error::BatchError;
use crate::offset::Offset;

/// Size of the fixed batch header, up to and including `recordsCount`.
pub const HEADER_BYTES: usize = 61;
/// Bytes before `batchLength`'s payload: `baseOffset` and `batchLength` themselves.
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// Where the CRC-covered region starts.
const CRC_START: usize = 21;
const MAGIC_V2: i8 = 2;

/// Compression codec of a batch (attributes bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    pub fn from_attributes(attributes: i16) -> Result<Compression, BatchError> {
        match (attributes & 0x07) as u8 {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            codec => Err(BatchError::UnknownCompression { codec }),
        }
    }

    fn bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// The offset after the last whole batch at the start of `bytes`: a run of stored batches that
/// may end inside a batch (a fetch region, which a consumer follows by fetching from there).
/// `None` when not even the first batch is whole or a header does not decode.
pub fn end_of_whole_batches(bytes: &[u8]) -> Option<i64> {
    batches(bytes, false)
        .last()
        .map(|(h, _)| h.last_offset().wrapping_add(1))
}

/// Timestamp type (attributes bit 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The fixed header of a RecordBatch v2, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Decodes the fixed header from the first [`HEADER_BYTES`] of `bytes` without checking the
    /// CRC. `bytes` may hold more than one batch.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
        if bytes.len() < HEADER_BYTES {
            return Err(BatchError::TooShort {
                len: bytes.len(),
                need: HEADER_BYTES,
            });
        }
        let header = BatchHeader {
            base_offset: be_i64(bytes, 0),
            batch_length: be_i32(bytes, 8),
            partition_leader_epoch: be_i32(bytes, 12),
            magic: bytes[16] as i8,
            crc: be_i32(bytes, 17) as u32,
            attributes: be_i16(bytes, 21),
            last_offset_delta: be_i32(bytes, 23),
            base_timestamp: be_i64(bytes, 27),
            max_timestamp: be_i64(bytes, 35),
            producer_id: be_i64(bytes, 43),
            producer_epoch: be_i16(bytes, 51),
            base_sequence: be_i32(bytes, 53),
            records_count: be_i32(bytes, 57),
        };
        if header.magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic {
                magic: header.magic,
            });
        }
        if (header.batch_length as i64) < (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i64 {
            return Err(BatchError::InvalidLength {
                batch_length: header.batch_length,
            });
        }
        Ok(header)
    }

    /// Total size of the batch in bytes, including `baseOffset` and `batchLength`.
    pub fn total_bytes(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD_BYTES
    }

    /// `baseOffset + lastOffsetDelta` (wrapping: a hostile header may hold any base offset;
    /// the broker assigns its own before trusting it).
    pub fn last_offset(&self) -> i64 {
        self.base_offset.wrapping_add(self.last_offset_delta as i64)
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes)
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & 0x08 != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
}

/// Validates one complete batch: header fields, the declared length against `batch.len()`,
/// magic, CRC-32C over attributes..end, and the record count against `lastOffsetDelta`.
pub fn validate(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(batch)?;
    if header.total_bytes() != batch.len() {
        return Err(BatchError::LengthMismatch {
            declared: header.total_bytes(),
            actual: batch.len(),
        });
    }
    let actual = crc32c::crc32c(&batch[CRC_START..]);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    // A producer batch holds `lastOffsetDelta + 1` records. Compaction may leave fewer records
    // than the delta span, but never more, and never a negative count.
    if header.records_count < 0
        || header.last_offset_delta < 0
        || header.records_count as i64 > header.last_offset_delta as i64 + 1
    {
        return Err(BatchError::InvalidRecordCount {
            count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    header.compression()?;
    Ok(header)
}

/// Like [`validate`], and also requires what a freshly produced batch has: at least one record
/// and exactly `lastOffsetDelta + 1` records.
pub fn validate_for_append(batch: &[u8]) -> Result<BatchHeader, BatchError> {
    let header = validate(batch)?;
    if header.records_count < 1 || header.records_count != header.last_offset_delta + 1 {
        return Err(BatchError::InvalidRecordCount {
            count: header.records_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    Ok(header)
}

/// Writes `baseOffset` in place. Not covered by the CRC, so the batch stays valid.
pub fn set_base_offset(batch: &mut [u8], base_offset: Offset) {
    assert!(
        batch.len() >= HEADER_BYTES,
        "set_base_offset on a short batch"
    );
    batch[0..8].copy_from_slice(&base_offset.0.to_be_bytes());
}

/// Writes `partitionLeaderEpoch` in place. Not covered by the CRC.
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    assert!(
        batch.len() >= HEADER_BYTES,
        "set_partition_leader_epoch on a short batch"
    );
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// Marks the batch as `LogAppendTime` and stamps `now_ms` as its max timestamp (what Kafka does
/// for topics with `message.timestamp.type=LogAppendTime`).
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    AppendTimeStamp::of(batch, now_ms).write_to(batch);
}

/// What marking a batch `LogAppendTime` at `now_ms` changes in its header: attributes and
/// maxTimestamp, both under the CRC. The new CRC is derived from the old one without reading
/// the records ([`crate::crc`]), so a batch whose CRC was wrong keeps a wrong CRC. Computed from
/// the batch as received and written into the copy being stored: reading back a just-copied
/// batch stalls on the copy's stores.
#[derive(Debug, Clone, Copy)]
pub struct AppendTimeStamp {
    /// attributes:i16 lastOffsetDelta:i32 baseTimestamp:i64 maxTimestamp:i64
    prefix: [u8; 22],
    crc: u32,
}

impl AppendTimeStamp {
    pub fn of(batch: &[u8], now_ms: i64) -> AppendTimeStamp {
        assert!(
            batch.len() >= HEADER_BYTES,
            "a LogAppendTime stamp of a short batch"
        );
        let old = &batch[CRC_START..CRC_START + 22];
        let mut prefix = [0u8; 22];
        prefix.copy_from_slice(old);
        let attributes = i16::from_be_bytes([prefix[0], prefix[1]]) | 0x08;
        prefix[0..2].copy_from_slice(&attributes.to_be_bytes());
        prefix[14..22].copy_from_slice(&now_ms.to_be_bytes());
        let crc = u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]]);
        let rest = batch.len() - CRC_START - 22;
        AppendTimeStamp {
            prefix,
            crc: crate::crc::after_prefix_change(crc, old, &prefix, rest),
        }
    }

    /// Writes the stamp into the batch it was computed from, or a copy of it.
    pub fn write_to(&self, batch: &mut [u8]) {
        batch[17..21].copy_from_slice(&self.crc.to_be_bytes());
        batch[CRC_START..CRC_START + 22].copy_from_slice(&self.prefix);
    }
}

/// Splits a buffer holding consecutive batches into `(header, byte range)` pairs, stopping at the
/// first incomplete or malformed batch. Returns the batches found and the number of bytes they
/// span. CRCs are checked only when `check_crc` is set.
pub fn split_batches(
    bytes: &[u8],
    check_crc: bool,
) -> (Vec<(BatchHeader, std::ops::Range<usize>)>, usize) {
    let out: Vec<_> = batches(bytes, check_crc).collect();
    let used = out.last().map_or(0, |(_, r)| r.end);
    (out, used)
}

/// [`split_batches`] as an iterator (no allocation): each whole, well-formed batch's header and
/// byte range, up to the first incomplete or malformed one.
pub fn batches(
    bytes: &[u8],
    check_crc: bool,
) -> impl Iterator<Item = (BatchHeader, std::ops::Range<usize>)> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let header = BatchHeader::parse(&bytes[pos..]).ok()?;
        let end = pos.checked_add(header.total_bytes())?;
        if end > bytes.len() || (check_crc && validate(&bytes[pos..end]).is_err()) {
            return None;
        }
        let range = pos..end;
        pos = end;
        Some((header, range))
    })
}

/// A record header (key/value pair attached to a record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// One decoded record, with absolute offset and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<RecordHeader>,
}

/// One record of an uncompressed batch, borrowed from the batch bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

/// One record's fields after its length prefix, borrowed from `r` (which ends where the
/// record ends): (offset delta, record with its timestamp *delta*).
fn parse_record<'a>(r: &mut Cursor<'a>, index: usize) -> Result<(i32, RecordView<'a>), BatchError> {
    let bad = |reason| BatchError::MalformedRecord { index, reason };
    let _attributes = r.byte().ok_or(bad("attributes"))?;
    let timestamp_delta = r.varlong().ok_or(bad("timestamp delta"))?;
    let offset_delta = r.varint().ok_or(bad("offset delta"))?;
    let key = r.slice_opt().ok_or(bad("key"))?;
    let value = r.slice_opt().ok_or(bad("value"))?;
    let header_count = r.varint().ok_or(bad("header count"))?;
    if header_count < 0 || header_count as usize > r.remaining() {
        return Err(bad("header count out of range"));
    }
    let mut headers = Vec::with_capacity(header_count as usize);
    for _ in 0..header_count {
        let k = r
            .slice_opt()
            .ok_or(bad("header key"))?
            .ok_or(bad("null header key"))?;
        let v = r.slice_opt().ok_or(bad("header value"))?;
        headers.push((k, v));
    }
    if r.remaining() != 0 {
        return Err(bad("trailing bytes"));
    }
    Ok((
        offset_delta,
        RecordView {
            timestamp: timestamp_delta,
            key,
            value,
            headers,
        },
    ))
}

/// Splits the next length-prefixed record off `reader`.
fn next_record<'a>(reader: &mut Cursor<'a>, index: usize) -> Result<Cursor<'a>, BatchError> {
    let bad = |reason| BatchError::MalformedRecord { index, reason };
    let length = reader.varint().ok_or(bad("length"))?;
    if length < 0 || length as usize > reader.remaining() {
        return Err(bad("length out of range"));
    }
    let end = reader.pos + length as usize;
    let r = Cursor {
        bytes: &reader.bytes[..end],
        pos: reader.pos,
    };
    reader.pos = end;
    Ok(r)
}

/// The only record of a valid, uncompressed single-record batch, without copying it (a
/// stream message on the publish path). `Ok(None)` for a compressed batch (decode it with
/// [`records`]); an error for anything malformed or for more than one record.
pub fn single_record(batch: &[u8]) -> Result<Option<RecordView<'_>>, BatchError> {
    let header = validate(batch)?;
    single_record_in(batch, &header)
}

/// [`single_record`] of a batch [`validate`] already accepted (`header` is its answer): the
/// CRC is not computed again.
pub fn single_record_in<'a>(
    batch: &'a [u8],
    header: &BatchHeader,
) -> Result<Option<RecordView<'a>>, BatchError> {
    if header.compression()? != Compression::None {
        return Ok(None);
    }
    let bad = |reason| BatchError::MalformedRecord { index: 0, reason };
    if header.records_count != 1 {
        return Err(bad("expected exactly one record"));
    }
    let mut reader = Cursor {
        bytes: &batch[HEADER_BYTES..],
        pos: 0,
    };
    let mut r = next_record(&mut reader, 0)?;
    if reader.remaining() != 0 {
        return Err(bad("length does not match the batch"));
    }
    let (_, mut view) = parse_record(&mut r, 0)?;
    view.timestamp = header.base_timestamp.wrapping_add(view.timestamp);
    Ok(Some(view))
}

/// Decodes every record of a batch, decompressing if needed. `decompressed_bytes_max` bounds
/// the memory a hostile compressed batch can make us allocate.
pub fn records(batch: &[u8], decompressed_bytes_max: usize) -> Result<Vec<Record>, BatchError> {
    let header = validate(batch)?;
    let payload = &batch[HEADER_BYTES..];
    let owned;
    let body: &[u8] = match header.compression()? {
        Compression::None => payload,
        codec => {
            owned = decompress(codec, payload, decompressed_bytes_max)?;
            &owned
        }
    };
    let mut reader = Cursor {
        bytes: body,
        pos: 0,
    };
    let count = header.records_count as usize;
    // Each record takes at least 7 bytes; do not trust the count for the allocation.
    let mut out = Vec::with_capacity(count.min(body.len() / 7 + 1));
    // Under LogAppendTime every record's timestamp is the broker's append time, as in Kafka's
    // `DefaultRecord.readFrom`.
    let append_time =
        (header.timestamp_type() == TimestampType::LogAppendTime).then_some(header.max_timestamp);
    for index in 0..count {
        let mut r = next_record(&mut reader, index)?;
        let (offset_delta, v) = parse_record(&mut r, index)?;
        out.push(Record {
            offset: header.base_offset.wrapping_add(offset_delta as i64),
            timestamp: append_time.unwrap_or(header.base_timestamp.wrapping_add(v.timestamp)),
            key: v.key.map(<[u8]>::to_vec),
            value: v.value.map(<[u8]>::to_vec),
            headers: v
                .headers
                .into_iter()
                .map(|(k, v)| RecordHeader {
                    key: k.to_vec(),
                    value: v.map(<[u8]>::to_vec),
                })
                .collect(),
        });
    }
    Ok(out)
}

fn decompress(codec: Compression, payload: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let fail = |reason: String| BatchError::Decompress {
        codec: codec.name(),
        reason,
    };
    let mut out = Vec::new();
    let read_limited = |reader: &mut dyn Read, out: &mut Vec<u8>| -> Result<(), BatchError> {
        let n = reader
            .take(limit as u64 + 1)
            .read_to_end(out)
            .map_err(|e| fail(e.to_string()))?;
        if n > limit {
            return Err(BatchError::DecompressedTooLarge { limit_bytes: limit });
        }
        Ok(())
    };
    match codec {
        Compression::None => out.extend_from_slice(payload),
        Compression::Gzip => read_limited(&mut flate2::read::GzDecoder::new(payload), &mut out)?,
        Compression::Lz4 => {
            read_limited(&mut lz4_flex::frame::FrameDecoder::new(payload), &mut out)?
        }
        Compression::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::new(payload).map_err(|e| fail(e.to_string()))?;
            read_limited(&mut decoder, &mut out)?
        }
        Compression::Snappy => {
            // Java clients use xerial's framing; librdkafka also writes it. Accept raw blocks too.
            const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
            if payload.starts_with(XERIAL_MAGIC) && payload.len() >= 16 {
                let mut pos = 16;
                while pos < payload.len() {
                    if pos + 4 > payload.len() {
                        return Err(fail("truncated xerial chunk length".into()));
                    }
                    let len = be_i32(payload, pos) as usize;
                    pos += 4;
                    let chunk = payload
                        .get(pos..pos.saturating_add(len))
                        .ok_or_else(|| fail("truncated xerial chunk".into()))?;
                    snappy_block(chunk, limit - out.len(), &mut out, fail)?;
                    pos += len;
                }
            } else {
                snappy_block(payload, limit, &mut out, fail)?;
            }
        }
    }
    Ok(out)
}

fn snappy_block(
    block: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
    fail: impl Fn(String) -> BatchError,
) -> Result<(), BatchError> {
    let len = snap::raw::decompress_len(block).map_err(|e| fail(e.to_string()))?;
    if len > limit {
        return Err(BatchError::DecompressedTooLarge { limit_bytes: limit });
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// Builds a RecordBatch v2. Used by tools, tests and benchmarks; the broker itself never
/// re-encodes a producer's batch.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    compression: Compression,
    base_timestamp: i64,
    producer_id: i64,
    producer_epoch: i16,
    base_sequence: i32,
    records: Vec<u8>,
    count: i32,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new(compression: Compression, base_timestamp: i64) -> BatchBuilder {
        BatchBuilder {
            compression,
            base_timestamp,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records: Vec::new(),
            count: 0,
            max_timestamp: base_timestamp,
        }
    }

    pub fn producer(mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = producer_epoch;
        self.base_sequence = base_sequence;
        self
    }

    pub fn push(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        // The record's length comes first: computed, so the record is written once, in place.
        let delta_ts = timestamp - self.base_timestamp;
        let delta_offset = self.count as i64;
        let len = 1
            + varlong_len(delta_ts)
            + varlong_len(delta_offset)
            + bytes_opt_len(key)
            + bytes_opt_len(value)
            + varlong_len(headers.len() as i64)
            + headers
                .iter()
                .map(|(k, v)| bytes_opt_len(Some(k)) + bytes_opt_len(*v))
                .sum::<usize>();
        self.records.reserve(varlong_len(len as i64) + len);
        put_varlong(&mut self.records, len as i64);
        self.records.push(0u8);
        put_varlong(&mut self.records, delta_ts);
        put_varlong(&mut self.records, delta_offset);
        put_bytes_opt(&mut self.records, key);
        put_bytes_opt(&mut self.records, value);
        put_varlong(&mut self.records, headers.len() as i64);
        for (k, v) in headers {
            put_bytes_opt(&mut self.records, Some(k));
            put_bytes_opt(&mut self.records, *v);
        }
        self.count += 1;
        self.max_timestamp = self.max_timestamp.max(timestamp);
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encodes the batch with `baseOffset` 0; the log assigns the real one.
    pub fn build(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.build_into(&mut out);
        out
    }

    /// Appends the batch to `out` (an uncompressed batch is written without an intermediate
    /// buffer: a frame can carry it without another copy).
    pub fn build_into(&self, out: &mut Vec<u8>) {
        let compressed;
        let payload = match self.compression {
            Compression::None => &self.records[..],
            codec => {
                compressed = compress(codec, &self.records);
                &compressed[..]
            }
        };
        let total = HEADER_BYTES + payload.len();
        out.reserve(total);
        let start = out.len();
        out.extend_from_slice(&0i64.to_be_bytes());
        out.extend_from_slice(&((total - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.push(MAGIC_V2 as u8);
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&self.compression.bits().to_be_bytes());
        out.extend_from_slice(&(self.count - 1).max(0).to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(payload);
        let crc = crc32c::crc32c(&out[start + CRC_START..]);
        out[start + 17..start + 21].copy_from_slice(&crc.to_be_bytes());
    }
}

fn compress(codec: Compression, raw: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match codec {
        Compression::None => raw.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(raw).expect("in-memory gzip write");
            e.finish().expect("in-memory gzip finish")
        }
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(raw)
            .expect("in-memory snappy"),
        Compression::Lz4 => {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(raw).expect("in-memory lz4 write");
            e.finish().expect("in-memory lz4 finish")
        }
        Compression::Zstd => zstd::bulk::compress(raw, 1).expect("in-memory zstd"),
    }
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

fn put_varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Bytes `put_varlong` writes for `v`.
fn varlong_len(v: i64) -> usize {
    let z = ((v << 1) ^ (v >> 63)) as u64;
    (64 - (z | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes `put_bytes_opt` writes for `b`.
fn bytes_opt_len(b: Option<&[u8]>) -> usize {
    match b {
        None => varlong_len(-1),
        Some(b) => varlong_len(b.len() as i64) + b.len(),
    }
}

fn put_bytes_opt(out: &mut Vec<u8>, b: Option<&[u8]>) {
    match b {
        None => put_varlong(out, -1),
        Some(b) => {
            put_varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn varlong(&mut self) -> Option<i64> {
        let mut z: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return None;
            }
            z |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Some((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        None
    }

    fn varint(&mut self) -> Option<i32> {
        let v = self.varlong()?;
        i32::try_from(v).ok()
    }

    fn slice_opt(&mut self) -> Option<Option<&'a [u8]>> {
        let len = self.varint()?;
        if len < 0 {
            return Some(None);
        }
        let len = len as usize;
        if len > self.remaining() {
            return None;
        }
        let out = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Some(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varlong_len_is_what_put_varlong_writes() {
        let mut values = vec![0i64, 1, -1, 63, 64, -64, -65, i64::MAX, i64::MIN];
        for shift in 0..63 {
            values.extend([1i64 << shift, (1i64 << shift) - 1, -(1i64 << shift)]);
        }
        for v in values {
            let mut out = Vec::new();
            put_varlong(&mut out, v);
            assert_eq!(varlong_len(v), out.len(), "{v}");
        }
    }

    #[test]
    fn build_into_appends_the_batch_build_returns() {
        let mut b = BatchBuilder::new(Compression::None, 7);
        b.push(9, Some(b"k"), Some(&[5u8; 300]), &[(b"h", None)]);
        b.push(12, None, Some(b"v"), &[]);
        let mut out = b"prefix".to_vec();
        b.build_into(&mut out);
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(out[6..], b.build()[..]);
        let rs = records(&out[6..], 1 << 20).unwrap();
        assert_eq!(rs.len(), 2);
        assert_eq!(rs[0].value.as_deref(), Some(&[5u8; 300][..]));
    }

    #[test]
    fn end_of_whole_batches_stops_at_a_cut_batch() {
        let batch = |base: i64, n: usize| {
            let mut b = BatchBuilder::new(Compression::None, 0);
            for i in 0..n {
                b.push(i as i64, None, Some(&[1u8; 100]), &[]);
            }
            let mut bytes = b.build();
            set_base_offset(&mut bytes, Offset(base));
            bytes
        };
        let mut run = batch(10, 3);
        let first = run.len();
        run.extend(batch(13, 5));
        let whole = run.len();
        run.extend(batch(18, 2));
        assert_eq!(end_of_whole_batches(&run), Some(20));
        assert_eq!(end_of_whole_batches(&run[..run.len() - 1]), Some(18));
        assert_eq!(end_of_whole_batches(&run[..whole + 30]), Some(18));
        assert_eq!(end_of_whole_batches(&run[..first]), Some(13));
        assert_eq!(end_of_whole_batches(&run[..first - 1]), None);
        assert_eq!(end_of_whole_batches(&run[..5]), None);
        assert_eq!(end_of_whole_batches(&[]), None);
        let mut bad = run.clone();
        bad[first + 16] = 1; // the second batch's magic
        assert_eq!(end_of_whole_batches(&bad), Some(13));
    }

    #[test]
    fn single_record_view_matches_records() {
        let mut b = BatchBuilder::new(Compression::None, 1000);
        b.push(
            1005,
            Some(b"orders.1"),
            Some(b"payload"),
            &[(b"Id", Some(b"x"))],
        );
        let bytes = b.build();
        let v = single_record(&bytes).unwrap().unwrap();
        let r = &records(&bytes, 1 << 20).unwrap()[0];
        assert_eq!(v.key, r.key.as_deref());
        assert_eq!(v.value, r.value.as_deref());
        assert_eq!(v.timestamp, r.timestamp);
        assert_eq!(v.headers, vec![(&b"Id"[..], Some(&b"x"[..]))]);
        b.push(1006, None, Some(b"second"), &[]);
        assert!(single_record(&b.build()).is_err());
        let mut z = BatchBuilder::new(Compression::Zstd, 1000);
        z.push(1005, Some(b"k"), Some(b"v"), &[]);
        assert_eq!(single_record(&z.build()).unwrap(), None);
    }

    /// Found by the batch_decode fuzz target: a record whose offset delta overflows a base
    /// offset near i64::MAX panicked (debug) in the record decoder.
    #[test]
    fn huge_base_offset_does_not_overflow() {
        let mut b = BatchBuilder::new(Compression::None, 0);
        b.push(0, Some(b"k"), Some(b"v"), &[]);
        b.push(0, Some(b"k"), Some(b"v"), &[]);
        let mut bytes = b.build();
        set_base_offset(&mut bytes, Offset(i64::MAX));
        let h = BatchHeader::parse(&bytes).unwrap();
        assert_eq!(h.last_offset(), i64::MIN);
        let decoded = records(&bytes, 1 << 20).unwrap();
        assert_eq!(decoded[1].offset, i64::MIN);
        let crash = [
            128, 0, 0, 0, 0, 0, 0, 248, 0, 0, 0, 0, 0, 0, 1, 128, 0, 49, 7, 33, 0, 0, 0, 1, 239,
            239, 239, 239, 0, 0, 0, 0, 2, 0, 0, 0, 0, 36, 0, 4, 0, 0, 0, 228, 228, 228, 228, 0, 0,
            0, 1, 0, 36, 0, 0, 10, 65, 1, 47, 239, 17, 16, 16, 6, 239, 53, 0, 239, 0, 0, 0, 0, 0,
            239, 239, 239, 0,
        ];
        let _ = records(&crash, 1 << 20);
        let mut owned = crash.to_vec();
        let len = (owned.len() - LOG_OVERHEAD_BYTES) as i32;
        owned[8..12].copy_from_slice(&len.to_be_bytes());
        owned[16] = 2;
        let crc = crc32c::crc32c(&owned[21..]);
        owned[17..21].copy_from_slice(&crc.to_be_bytes());
        let _ = records(&owned, 1 << 20);
    }
    use proptest::prelude::*;

    fn sample(codec: Compression, n: usize) -> Vec<u8> {
        let mut b = BatchBuilder::new(codec, 1_000);
        for i in 0..n {
            let key = format!("k{i}");
            let value = vec![i as u8; 100 + i];
            b.push(
                1_000 + i as i64,
                Some(key.as_bytes()),
                Some(&value),
                &[(b"h", Some(b"v"))],
            );
        }
        b.build()
    }

    #[test]
    fn every_codec_round_trips_records() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = sample(codec, 20);
            let header = validate_for_append(&batch).unwrap();
            assert_eq!(header.compression().unwrap(), codec);
            assert_eq!(header.records_count, 20);
            assert_eq!(header.max_timestamp, 1_019);
            let records = records(&batch, 1 << 20).unwrap();
            assert_eq!(records.len(), 20);
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.offset, i as i64);
                assert_eq!(r.timestamp, 1_000 + i as i64);
                assert_eq!(r.key.as_deref(), Some(format!("k{i}").as_bytes()));
                assert_eq!(r.value.as_deref(), Some(&vec![i as u8; 100 + i][..]));
                assert_eq!(r.headers[0].key, b"h");
            }
        }
    }

    #[test]
    fn a_log_append_time_stamp_written_into_a_copy_validates_and_keeps_corruption() {
        for records in [1, 3, 40] {
            let batch = sample(Compression::None, records);
            let mut copy = vec![0u8; batch.len()];
            copy.copy_from_slice(&batch);
            AppendTimeStamp::of(&batch, 1_700_000_000_123).write_to(&mut copy);
            let mut in_place = batch.clone();
            set_log_append_time(&mut in_place, 1_700_000_000_123);
            assert_eq!(copy, in_place);
            let header = validate(&copy).unwrap();
            assert_eq!(header.max_timestamp, 1_700_000_000_123);
            assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
            // A flipped record byte is not blessed by the stamp.
            let mut corrupt = batch.clone();
            let last = corrupt.len() - 1;
            corrupt[last] ^= 0x40;
            set_log_append_time(&mut corrupt, 5);
            assert!(matches!(
                validate(&corrupt),
                Err(BatchError::CrcMismatch { .. })
            ));
        }
    }

    #[test]
    fn offset_and_epoch_edits_keep_the_crc_valid() {
        let mut batch = sample(Compression::Lz4, 3);
        set_base_offset(&mut batch, Offset(1_234_567));
        set_partition_leader_epoch(&mut batch, 9);
        let header = validate(&batch).unwrap();
        assert_eq!(header.base_offset, 1_234_567);
        assert_eq!(header.last_offset(), 1_234_569);
        assert_eq!(header.partition_leader_epoch, 9);
        assert_eq!(records(&batch, 1 << 20).unwrap()[2].offset, 1_234_569);
        set_log_append_time(&mut batch, 77);
        let header = validate(&batch).unwrap();
        assert_eq!(header.timestamp_type(), TimestampType::LogAppendTime);
        assert_eq!(header.max_timestamp, 77);
        // Records then read as appended at that time, whatever their create times.
        assert!(records(&batch, 1 << 20)
            .unwrap()
            .iter()
            .all(|r| r.timestamp == 77));
    }

    #[test]
    fn corruption_is_detected() {
        let batch = sample(Compression::None, 2);
        for at in [21, 30, 60, batch.len() - 1] {
            let mut bad = batch.clone();
            bad[at] ^= 0x40;
            assert!(
                matches!(validate(&bad), Err(BatchError::CrcMismatch { .. })),
                "flip at {at}"
            );
        }
        let mut bad = batch.clone();
        bad[16] = 1;
        assert_eq!(
            validate(&bad),
            Err(BatchError::UnsupportedMagic { magic: 1 })
        );
        assert!(matches!(
            validate(&batch[..batch.len() - 1]),
            Err(BatchError::LengthMismatch { .. })
        ));
        assert!(matches!(
            validate(&batch[..10]),
            Err(BatchError::TooShort { .. })
        ));
    }

    #[test]
    fn decompression_is_bounded() {
        let mut b = BatchBuilder::new(Compression::Zstd, 0);
        b.push(0, None, Some(&vec![0u8; 1 << 20]), &[]);
        let batch = b.build();
        assert!(batch.len() < 4096);
        assert_eq!(
            records(&batch, 64 << 10),
            Err(BatchError::DecompressedTooLarge {
                limit_bytes: 64 << 10
            })
        );
    }

    #[test]
    fn split_stops_at_a_torn_batch() {
        let a = sample(Compression::None, 2);
        let b = sample(Compression::Gzip, 3);
        let mut buf = [a.clone(), b.clone()].concat();
        let (found, used) = split_batches(&buf, true);
        assert_eq!(found.len(), 2);
        assert_eq!(used, buf.len());
        buf.truncate(a.len() + b.len() / 2);
        let (found, used) = split_batches(&buf, true);
        assert_eq!((found.len(), used), (1, a.len()));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = validate(&bytes);
            let _ = records(&bytes, 1 << 16);
            let _ = split_batches(&bytes, true);
        }

        #[test]
        fn mutated_batches_never_panic(flips in proptest::collection::vec((0usize..400, any::<u8>()), 1..6)) {
            let mut batch = sample(Compression::None, 3);
            for (at, v) in flips {
                let at = at % batch.len();
                batch[at] = v;
            }
            // Recompute the CRC so decoding reaches the record parser.
            if batch.len() > CRC_START {
                let crc = crc32c::crc32c(&batch[CRC_START..]);
                batch[17..21].copy_from_slice(&crc.to_be_bytes());
            }
            let _ = records(&batch, 1 << 16);
        }
    }
}
