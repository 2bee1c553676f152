//! The typed layer: a queue of values of one type, encoded by a pluggable [`Codec`].

use std::marker::PhantomData;
use std::ops::Range;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::queue::Queue;
use crate::error::{Error, Result};
use crate::options::Options;

/// Turns values into payload bytes and back.
pub trait Codec<T>: Send + Sync {
    /// Appends the encoding of `value` to `out`.
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError>;
    /// Decodes a value from a whole payload.
    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError>;
}

/// The error type codecs return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The default codec: bincode 2 with its standard configuration, through serde.
#[derive(Debug, Default, Clone, Copy)]
pub struct Bincode;

impl<T: Serialize + DeserializeOwned> Codec<T> for Bincode {
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), BoxError> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())?;
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, BoxError> {
        let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
        if used != bytes.len() {
            return Err(format!("{} trailing bytes after the value", bytes.len() - used).into());
        }
        Ok(value)
    }
}

/// A queue of `T` values over a byte [`Queue`].
///
/// ```
/// # fn main() -> Result<(), diskspool::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// use diskspool::{Options, TypedQueue};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Job { id: u32, url: String }
///
/// let jobs: TypedQueue<Job> = TypedQueue::open(dir.path(), Options::default())?;
/// jobs.push(&Job { id: 1, url: "https://example.com".into() })?;
/// let (seq, job) = jobs.pop()?.expect("one job");
/// assert_eq!((seq, job.id), (0, 1));
/// # Ok(()) }
/// ```
pub struct TypedQueue<T, C = Bincode> {
    queue: Queue,
    codec: C,
    _values: PhantomData<fn(T) -> T>,
}

impl<T: Serialize + DeserializeOwned> TypedQueue<T, Bincode> {
    /// Opens a typed queue with the default codec.
    pub fn open(dir: impl AsRef<Path>, options: Options) -> Result<Self> {
        Ok(Self::with_codec(Queue::open(dir, options)?, Bincode))
    }
}

impl<T, C: Codec<T>> TypedQueue<T, C> {
    /// Wraps an open byte queue with a codec.
    pub fn with_codec(queue: Queue, codec: C) -> Self {
        TypedQueue {
            queue,
            codec,
            _values: PhantomData,
        }
    }

    /// Encodes and pushes one value; returns its sequence number.
    pub fn push(&self, value: &T) -> Result<u64> {
        let mut bytes = Vec::new();
        self.encode(value, &mut bytes)?;
        self.queue.push(&bytes)
    }

    /// Encodes and pushes values atomically (see [`Queue::push_batch`]).
    pub fn push_batch<'a>(&self, values: impl IntoIterator<Item = &'a T>) -> Result<Range<u64>>
    where
        T: 'a,
    {
        let mut payloads = Vec::new();
        for value in values {
            let mut bytes = Vec::new();
            self.encode(value, &mut bytes)?;
            payloads.push(bytes);
        }
        self.queue.push_batch(payloads)
    }

    /// Removes and decodes the oldest value. A payload that does not decode stays in the queue
    /// and the error names its sequence number; drain it through [`TypedQueue::inner`].
    pub fn pop(&self) -> Result<Option<(u64, T)>> {
        self.queue
            .pop_one_with(|record| Ok((record.seq(), self.decode(&record)?)))
    }

    /// Removes and decodes up to `max` of the oldest values.
    pub fn pop_batch(&self, max: usize) -> Result<Vec<(u64, T)>> {
        self.queue
            .pop_with(max, |record| Ok((record.seq(), self.decode(&record)?)))
    }

    /// Decodes the oldest value without removing it.
    pub fn peek(&self) -> Result<Option<(u64, T)>> {
        match self.queue.peek()? {
            Some(record) => Ok(Some((record.seq(), self.decode(&record)?))),
            None => Ok(None),
        }
    }

    /// The number of values in the queue.
    pub fn len(&self) -> u64 {
        self.queue.len()
    }

    /// True when the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The byte queue underneath.
    pub fn inner(&self) -> &Queue {
        &self.queue
    }

    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        self.codec
            .encode(value, out)
            .map_err(|source| Error::Codec { seq: None, source })
    }

    fn decode(&self, record: &crate::Record) -> Result<T> {
        self.codec
            .decode(record.payload())
            .map_err(|source| Error::Codec {
                seq: Some(record.seq()),
                source,
            })
    }
}
