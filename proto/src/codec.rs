//! The gRPC codec of every herald service: prost encoding with small initial buffers.
//!
//! tonic's default allocates 8 KiB per stream up front for encoding. Herald holds tens of
//! thousands of mostly idle subscription streams, so buffers start at 512 bytes and grow only
//! when a message needs it.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Initial encode/decode buffer per stream.
const BUFFER_SIZE: usize = 512;
/// Encoded bytes gathered before they are handed to the transport.
const YIELD_THRESHOLD: usize = 32 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct HeraldCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for HeraldCodec<T, U> {
    fn default() -> Self {
        HeraldCodec(PhantomData)
    }
}

impl<T, U> Codec for HeraldCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
