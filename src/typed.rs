//! The typed layer: a queue of values of one type, encoded by a pluggable [`Codec`].

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::delivery::Delivery;
use crate::engine::queue::Queue;
use crate::engine::record::Record;
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
/// `pop` and `peek` are the at-most-once fast path; `try_recv`, `recv` and `recv_timeout` hand
/// out a [`TypedDelivery`] to acknowledge when the job is done (at-least-once), and block as
/// [`Queue`'s calls of the same names](Queue#which-calls-block) do.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diskspool::{Options, TypedQueue};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Job { id: u32, url: String }
///
/// let dir = tempfile::tempdir()?;
/// let jobs: TypedQueue<Job> = TypedQueue::open(dir.path(), Options::default())?;
/// let seq = jobs.push(&Job { id: 1, url: "https://example.com".into() })?;
/// let job = jobs.try_recv()?.expect("one job");
/// assert_eq!((job.seq(), job.value().id), (seq, 1));
/// job.ack()?;
/// assert!(jobs.is_empty());
/// # Ok(()) }
/// ```
///
/// A payload the codec rejects is never lost nor skipped: `pop` and `peek` leave it in the
/// queue and return [`Error::Codec`]; a receive hands it out as
/// [`TypedRecvError::Undecodable`], whose delivery the caller dead-letters, acknowledges (drops)
/// or releases, and the queue moves on.
pub struct TypedQueue<T, C = Bincode> {
    queue: Queue,
    codec: C,
    _values: PhantomData<fn(T) -> T>,
}

impl<T, C> fmt::Debug for TypedQueue<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedQueue")
            .field("dir", &self.queue.dir())
            .field("type", &std::any::type_name::<T>())
            .finish_non_exhaustive()
    }
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

    /// Encodes and pushes one value with the options of `push` (a delay, a time to live, a
    /// deduplication id; see [`Queue::push_with`]); returns its sequence number.
    pub fn push_with(&self, value: &T, push: crate::Push) -> Result<u64> {
        let mut bytes = Vec::new();
        self.encode(value, &mut bytes)?;
        self.queue.push_with(&bytes, push)
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

    /// Removes and decodes the oldest value; `None` at once when the queue is empty. A payload
    /// that does not decode stays in the queue and the error ([`Error::Codec`]) names its
    /// sequence number; take it out with [`try_recv`](TypedQueue::try_recv), which hands it
    /// over as [`TypedRecvError::Undecodable`].
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

    /// Hands out the oldest available value under a lease, like [`Queue::try_recv`]: `None`
    /// at once when none is available. A payload that does not decode is handed out as
    /// [`TypedRecvError::Undecodable`], leased like any other.
    pub fn try_recv(&self) -> Result<Option<TypedDelivery<T>>, TypedRecvError> {
        match self.queue.try_recv()? {
            Some(delivery) => self.decode_delivery(delivery).map(Some),
            None => Ok(None),
        }
    }

    /// Like [`try_recv`](TypedQueue::try_recv), but blocks until a value is available, like
    /// [`Queue::recv`].
    pub fn recv(&self) -> Result<TypedDelivery<T>, TypedRecvError> {
        let delivery = self.queue.recv()?;
        self.decode_delivery(delivery)
    }

    /// Like [`try_recv`](TypedQueue::try_recv), but waits at most `timeout` for a value, like
    /// [`Queue::recv_timeout`].
    pub fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Option<TypedDelivery<T>>, TypedRecvError> {
        match self.queue.recv_timeout(timeout)? {
            Some(delivery) => self.decode_delivery(delivery).map(Some),
            None => Ok(None),
        }
    }

    fn decode_delivery(&self, delivery: Delivery) -> Result<TypedDelivery<T>, TypedRecvError> {
        match self.decode(delivery.record()) {
            Ok(value) => Ok(TypedDelivery { delivery, value }),
            Err(error) => Err(TypedRecvError::Undecodable {
                delivery: Box::new(delivery),
                error,
            }),
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

    /// Closes the queue and returns the error that dropping it ignores; see [`Queue::close`].
    pub fn close(self) -> Result<()> {
        self.queue.close()
    }

    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<()> {
        self.codec
            .encode(value, out)
            .map_err(|source| Error::Codec { seq: None, source })
    }

    fn decode(&self, record: &Record) -> Result<T> {
        self.codec
            .decode(record.payload())
            .map_err(|source| Error::Codec {
                seq: Some(record.seq()),
                source,
            })
    }
}

/// A value handed out by [`TypedQueue::try_recv`] (or `recv`, `recv_timeout`), leased to its
/// receiver like a [`Delivery`]: acknowledge it when the job is done. Dropping it releases it.
pub struct TypedDelivery<T> {
    delivery: Delivery,
    value: T,
}

impl<T: fmt::Debug> fmt::Debug for TypedDelivery<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypedDelivery")
            .field("seq", &self.seq())
            .field("deliveries", &self.deliveries())
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

impl<T> TypedDelivery<T> {
    /// The decoded value.
    pub fn value(&self) -> &T {
        &self.value
    }

    /// The record's sequence number.
    pub fn seq(&self) -> u64 {
        self.delivery.seq()
    }

    /// How many times this record has been handed out, this time included.
    pub fn deliveries(&self) -> u32 {
        self.delivery.deliveries()
    }

    /// The byte delivery underneath (its record, payload and enqueue time).
    pub fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    /// The job is done; see [`Delivery::ack`].
    pub fn ack(self) -> Result<()> {
        self.delivery.ack()
    }

    /// Releases the record for the next receive at once; see [`Delivery::nack`].
    pub fn nack(self) -> Result<()> {
        self.delivery.nack()
    }

    /// Releases the record to be delivered again after `delay`; see [`Delivery::retry_after`].
    pub fn retry_after(self, delay: Duration) -> Result<()> {
        self.delivery.retry_after(delay)
    }

    /// Extends the lease to `lease` from now; see [`Delivery::extend`].
    pub fn extend(&self, lease: Duration) -> Result<()> {
        self.delivery.extend(lease)
    }

    /// Moves the record to the dead-letter queue now; see [`Delivery::dead_letter`].
    pub fn dead_letter(self) -> Result<()> {
        self.delivery.dead_letter()
    }

    /// The decoded value and the delivery, to settle later.
    pub fn into_parts(self) -> (T, Delivery) {
        (self.value, self.delivery)
    }
}

/// Why a typed receive handed out no value.
///
/// `?` turns it into an [`Error`] (an undecodable record's delivery is then dropped, which
/// releases it); match on [`Undecodable`](TypedRecvError::Undecodable) to take the record out:
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use diskspool::{Options, TypedQueue, TypedRecvError};
///
/// let dir = tempfile::tempdir()?;
/// let numbers: TypedQueue<u32> = TypedQueue::open(dir.path().join("numbers"), Options::default())?;
/// numbers.inner().push(&[0xFF; 3])?; // not a bincode u32
/// match numbers.try_recv() {
///     Err(TypedRecvError::Undecodable { delivery, error }) => {
///         eprintln!("dead-lettering: {error}");
///         delivery.dead_letter()?; // to the sibling queue `numbers.dead`
///     }
///     other => panic!("expected an undecodable record, got {other:?}"),
/// }
/// assert!(numbers.is_empty());
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum TypedRecvError {
    /// The queue failed (see [`Error`]).
    Queue(Error),
    /// The codec rejected the payload. The record is leased to the caller in `delivery`:
    /// [`dead_letter`](Delivery::dead_letter) it, [`ack`](Delivery::ack) it to drop it, or
    /// release it (`nack`, or drop the delivery) to leave it for another try.
    Undecodable {
        /// The record, leased (boxed: it is large and this is the rare case).
        delivery: Box<Delivery>,
        /// [`Error::Codec`], naming the record.
        error: Error,
    },
}

impl fmt::Display for TypedRecvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TypedRecvError::Queue(error) | TypedRecvError::Undecodable { error, .. } => {
                error.fmt(f)
            }
        }
    }
}

impl std::error::Error for TypedRecvError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TypedRecvError::Queue(error) | TypedRecvError::Undecodable { error, .. } => {
                error.source()
            }
        }
    }
}

impl From<Error> for TypedRecvError {
    fn from(error: Error) -> Self {
        TypedRecvError::Queue(error)
    }
}

impl From<TypedRecvError> for Error {
    fn from(error: TypedRecvError) -> Self {
        match error {
            TypedRecvError::Queue(error) | TypedRecvError::Undecodable { error, .. } => error,
        }
    }
}
