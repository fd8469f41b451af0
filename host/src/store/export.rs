//! Export and import: everything a store holds that is not derived (the log with its
//! positions, components and their bytes, idempotency and dedup outcomes, cursors, dead
//! letters), written from one consistent snapshot of a running store, and loaded into an
//! empty one. It is the embedded store's online backup and the way from one store to the
//! other. Snapshots and views are derived: the importing host rebuilds them.
//!
//! # The file
//! A sequence of frames, each a 4-byte big-endian length and one [`ExportRecord`] in
//! MessagePack: first a `Header`, then the records, last an `End` that counts them and holds
//! the SHA-256 of every frame before it. An import checks the whole file against it before it
//! writes anything.

use super::{DeadLetter, EventStore, Position, StoreError, StoredEvent, StreamId, Writer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;
use tokio::sync::mpsc;

/// What the first frame names.
pub const FORMAT: &str = "cairn-export";
/// The version of the file's records this Cairn writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The largest frame an import accepts: above the largest component (32 MiB by default) and
/// any event, so a damaged length cannot ask for gigabytes.
const MAX_FRAME: usize = 256 << 20;

/// Records, and their bytes, per restore request: each is one transaction of the importing
/// store.
const RESTORE_RECORDS: usize = 2000;
const RESTORE_BYTES: usize = 32 << 20;

/// About how many bytes a record brings into the store.
fn record_bytes(record: &ExportRecord) -> usize {
    match record {
        ExportRecord::Event(event) => event.payload.len() + 128,
        ExportRecord::Blob { bytes, .. } => bytes.len(),
        ExportRecord::Component { record, .. } => record.len(),
        ExportRecord::Outcome { outcome, .. } => outcome.len() + 64,
        _ => 64,
    }
}

/// One record of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExportRecord {
    Header {
        format: String,
        version: u32,
        /// The log's head in the snapshot: the export holds events 1 ..= head.
        head: Position,
        exported_at: String,
    },
    Event(StoredEvent),
    Blob {
        #[serde(with = "serde_bytes")]
        digest: Vec<u8>,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    Component {
        name: String,
        #[serde(with = "serde_bytes")]
        record: Vec<u8>,
    },
    Outcome {
        stream: StreamId,
        /// As stored: `idem:<key>` or `cause:<key>`.
        key: String,
        #[serde(with = "serde_bytes")]
        outcome: Vec<u8>,
        /// For a client's idempotency key: when it was recorded (µs), from when it expires.
        recorded_at_micros: Option<u64>,
    },
    Cursor {
        name: String,
        position: Position,
    },
    DeadLetter(DeadLetter),
    End {
        records: u64,
        #[serde(with = "serde_bytes")]
        sha256: Vec<u8>,
    },
}

impl ExportRecord {
    fn frame(&self) -> Vec<u8> {
        let body = rmp_serde::to_vec(self).expect("encode an export record");
        let mut frame = Vec::with_capacity(body.len() + 4);
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }
}

/// The header of an export of a snapshot at `head`.
pub fn header(head: Position) -> ExportRecord {
    ExportRecord::Header {
        format: FORMAT.to_owned(),
        version: FORMAT_VERSION,
        head,
        exported_at: crate::time::rfc3339_micros(crate::time::now_micros()),
    }
}

/// The export of `store` as the bytes of the file, frame by frame: the store's snapshot
/// records, then the `End` frame. An error ends the stream with it (the file has no `End`,
/// so no import takes it).
pub fn frames(store: &EventStore) -> mpsc::Receiver<Result<Vec<u8>, StoreError>> {
    let (records_tx, mut records) = mpsc::channel(64);
    store.export(records_tx);
    let (frames_tx, frames) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut count = 0u64;
        while let Some(record) = records.recv().await {
            let frame = record.map(|record| record.frame());
            if let Ok(frame) = &frame {
                hash.update(frame);
                count += 1;
            }
            let failed = frame.is_err();
            if frames_tx.send(frame).await.is_err() || failed {
                return;
            }
        }
        let end = ExportRecord::End { records: count, sha256: hash.finalize().to_vec() };
        let _ = frames_tx.send(Ok(end.frame())).await;
    });
    frames
}

/// Whether an imported event may be stored next: at the position after the head (`next`)
/// and the version after its stream's (`stream_version`). A store refuses it otherwise.
pub(crate) fn check_follows(
    event: &StoredEvent,
    next: Position,
    stream_version: super::Version,
) -> Result<(), StoreError> {
    if event.position != next {
        return Err(StoreError::Corrupt(format!(
            "an imported event at position {} does not follow the head at {}",
            event.position,
            next - 1
        )));
    }
    if event.version != stream_version + 1 {
        return Err(StoreError::Corrupt(format!(
            "an imported event of {} is version {}, after version {stream_version}",
            event.stream(),
            event.version
        )));
    }
    Ok(())
}

/// Why a file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read the export: {0}")]
    Read(#[from] std::io::Error),
    #[error("not a Cairn export: {0}")]
    NotAnExport(String),
    #[error("the export is damaged: {0}")]
    Damaged(String),
    #[error(
        "the store is not empty (its log is at position {head}, {components} components): \
         an export is imported only into an empty store"
    )]
    NotEmpty { head: Position, components: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an export holds, as its check found it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Contents {
    pub head: Position,
    pub records: u64,
    pub events: u64,
    pub components: u64,
    pub outcomes: u64,
    pub cursors: u64,
    pub dead_letters: u64,
    pub sha256: String,
}

/// Read the frames of `reader` one by one.
struct Frames<R> {
    reader: R,
}

impl<R: Read> Frames<R> {
    /// The next frame's bytes and record; `None` at the end of the file.
    fn next(&mut self) -> Result<Option<(Vec<u8>, ExportRecord)>, ImportError> {
        let mut length = [0u8; 4];
        match self.reader.read_exact(&mut length) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(error) => return Err(error.into()),
        }
        let length = u32::from_be_bytes(length) as usize;
        if length > MAX_FRAME {
            return Err(ImportError::Damaged(format!("a frame of {length} bytes")));
        }
        let mut frame = Vec::with_capacity(length + 4);
        frame.extend_from_slice(&(length as u32).to_be_bytes());
        frame.resize(length + 4, 0);
        self.reader.read_exact(&mut frame[4..]).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => ImportError::Damaged("it ends inside a frame".to_owned()),
            _ => e.into(),
        })?;
        let record = rmp_serde::from_slice(&frame[4..])
            .map_err(|e| ImportError::Damaged(format!("a record does not decode: {e}")))?;
        Ok(Some((frame, record)))
    }
}

/// Check an export whole: its header, every record, and its `End` against what came before.
pub fn check(reader: impl Read) -> Result<Contents, ImportError> {
    let mut frames = Frames { reader };
    let mut hash = Sha256::new();
    let mut contents = Contents::default();
    match frames.next()? {
        Some((frame, ExportRecord::Header { format, version, head, .. })) => {
            if format != FORMAT {
                return Err(ImportError::NotAnExport(format!("its header names {format:?}")));
            }
            if version != FORMAT_VERSION {
                return Err(ImportError::NotAnExport(format!(
                    "it is of format version {version}; this Cairn reads {FORMAT_VERSION}"
                )));
            }
            hash.update(&frame);
            contents.head = head;
            contents.records = 1;
        }
        _ => return Err(ImportError::NotAnExport("it does not start with a Cairn export header".to_owned())),
    }
    let mut position = Position::ZERO;
    loop {
        let Some((frame, record)) = frames.next()? else {
            return Err(ImportError::Damaged("it has no end record: the export did not finish".to_owned()));
        };
        match &record {
            ExportRecord::End { records, sha256 } => {
                if *records != contents.records {
                    return Err(ImportError::Damaged(format!(
                        "its end counts {records} records, the file holds {}",
                        contents.records
                    )));
                }
                if hash.finalize().as_slice() != sha256.as_slice() {
                    return Err(ImportError::Damaged("its checksum does not match".to_owned()));
                }
                if position != contents.head {
                    return Err(ImportError::Damaged(format!(
                        "its header says the log ends at {}, its events end at {position}",
                        contents.head
                    )));
                }
                contents.sha256 = hex::encode(sha256);
                if frames.next()?.is_some() {
                    return Err(ImportError::Damaged("it goes on after its end record".to_owned()));
                }
                return Ok(contents);
            }
            ExportRecord::Header { .. } => return Err(ImportError::Damaged("a second header".to_owned())),
            ExportRecord::Event(event) => {
                if event.position != position + 1 {
                    return Err(ImportError::Damaged(format!(
                        "event at position {} follows {position}: the log must be whole",
                        event.position
                    )));
                }
                position = event.position;
                contents.events += 1;
            }
            ExportRecord::Component { .. } => contents.components += 1,
            ExportRecord::Outcome { .. } => contents.outcomes += 1,
            ExportRecord::Cursor { .. } => contents.cursors += 1,
            ExportRecord::DeadLetter(_) => contents.dead_letters += 1,
            ExportRecord::Blob { .. } => {}
        }
        hash.update(&frame);
        contents.records += 1;
    }
}

/// Check an export whole (`checked` hears what it holds), then load it into an empty store;
/// `progress` hears how many events are in.
///
/// # Errors
/// The store is not empty, the file is not a whole export (checked before anything is
/// written), or the store failed.
pub async fn import(
    path: &std::path::Path,
    store: &EventStore,
    writer: &Writer,
    checked: impl FnOnce(&Contents),
    progress: impl Fn(u64),
) -> Result<Contents, ImportError> {
    let contents = {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || check(std::io::BufReader::new(std::fs::File::open(path)?)))
            .await
            .map_err(|e| ImportError::Damaged(e.to_string()))??
    };
    checked(&contents);
    let head = store.head_position();
    let components = store.component_records().await?.len();
    if head != Position::ZERO || components > 0 {
        return Err(ImportError::NotEmpty { head, components });
    }
    let (chunks_tx, mut chunks) = mpsc::channel::<Result<Vec<ExportRecord>, ImportError>>(4);
    let path = path.to_owned();
    let reading = tokio::task::spawn_blocking(move || {
        let read = || -> Result<(), ImportError> {
            let mut frames = Frames { reader: std::io::BufReader::new(std::fs::File::open(&path)?) };
            let mut chunk = Vec::with_capacity(RESTORE_RECORDS);
            let mut bytes = 0;
            while let Some((_, record)) = frames.next()? {
                if matches!(record, ExportRecord::Header { .. } | ExportRecord::End { .. }) {
                    continue;
                }
                bytes += record_bytes(&record);
                chunk.push(record);
                if chunk.len() >= RESTORE_RECORDS || bytes >= RESTORE_BYTES {
                    bytes = 0;
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(RESTORE_RECORDS));
                    if chunks_tx.blocking_send(Ok(full)).is_err() {
                        return Ok(());
                    }
                }
            }
            if !chunk.is_empty() {
                let _ = chunks_tx.blocking_send(Ok(chunk));
            }
            Ok(())
        };
        if let Err(error) = read() {
            let _ = chunks_tx.blocking_send(Err(error));
        }
    });
    let mut events = 0;
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk?;
        events += chunk.iter().filter(|r| matches!(r, ExportRecord::Event(_))).count() as u64;
        writer.restore(chunk).await?;
        progress(events);
    }
    reading.await.map_err(|e| ImportError::Damaged(e.to_string()))?;
    Ok(contents)
}
