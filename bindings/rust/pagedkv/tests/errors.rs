//! Errors: every failure is a `Result::Err` whose `Error` carries the status and the
//! library's message (or this crate's, for its own bounds checks), and leaves state as it was.

use pagedkv::{
    BlockTableParams, CacheFormat, CacheView, DType, Device, DeviceBuffer, Error, LayerSpec, Pool, Status, Stream,
    TensorMut, TensorRef, Tier,
};

fn assert_error<T: std::fmt::Debug>(result: pagedkv::Result<T>, status: Status, needle: &str) -> Error {
    let err = result.unwrap_err();
    assert_eq!(err.status(), status, "{err}");
    assert!(err.message().contains(needle), "message {:?} lacks {needle:?}", err.message());
    assert!(err.to_string().starts_with(status.name()), "{err}");
    assert_eq!(err.raw_status(), status.raw().0);
    err
}

#[test]
fn library_messages_name_the_function_and_argument() {
    let mut k = vec![0f32; 2 * 4 * 8];
    let cache = CacheView::builder(CacheFormat::F32, 2, 4, 1, 8).key(&mut k).build().unwrap();
    let key = [1f32; 8];
    let slots = [0i64];
    let wrong_dtype = [0f32];
    let err = assert_error(
        cache.write_kv(
            &TensorRef::from_slice(&key, &[1, 1, 8]).unwrap(),
            None,
            &TensorRef::from_slice(&wrong_dtype, &[1]).unwrap(),
            Stream::DEFAULT,
        ),
        Status::InvalidArgument,
        "slot_mapping dtype must be int32 or int64, got f32",
    );
    assert!(err.message().starts_with("pkv_write_kv: "), "{err}");
    assert_eq!(err.cuda_error(), None);

    assert_error(
        cache.write_kv(
            &TensorRef::from_slice(&key, &[1, 1, 8]).unwrap(),
            Some(&TensorRef::from_slice(&key, &[1, 1, 8]).unwrap()),
            &TensorRef::from_slice(&slots, &[1]).unwrap(),
            Stream::DEFAULT,
        ),
        Status::InvalidArgument,
        "value must be NULL for a K-only cache",
    );
    let fp8_in = [0u8; 8];
    assert_error(
        cache.write_kv(
            &TensorRef::with_dtype(&fp8_in, DType::FP8E4M3, &[1, 1, 8]).unwrap(),
            None,
            &TensorRef::from_slice(&slots, &[1]).unwrap(),
            Stream::DEFAULT,
        ),
        Status::NotSupported,
        "key dtype fp8_e4m3",
    );
    let mut out = [0f32; 8];
    let (table, cu) = ([0i32], [0i32, 1, 1]);
    assert_error(
        cache.gather_kv(
            &mut TensorMut::from_slice(&mut out, &[1, 1, 8]).unwrap(),
            None,
            &TensorRef::from_slice(&table, &[1, 1]).unwrap(),
            &TensorRef::from_slice(&cu, &[3]).unwrap(),
            None,
            Stream::DEFAULT,
        ),
        Status::InvalidArgument,
        "cu_seq_lens has 3 entries, needs batch + 1 = 2",
    );
    // Writing an MLA entry with the wrong widths.
    let kv_c = [0f32; 6];
    assert_error(
        cache.write_mla(
            &TensorRef::from_slice(&kv_c, &[1, 6]).unwrap(),
            &TensorRef::from_slice(&kv_c, &[1, 6]).unwrap(),
            &TensorRef::from_slice(&slots, &[1]).unwrap(),
            Stream::DEFAULT,
        ),
        Status::InvalidArgument,
        "differs from the cache's head_size_k 8",
    );
}

#[test]
fn the_crate_checks_bounds_before_calling() {
    let mut k = vec![0u16; 2 * 4 * 2 * 8 - 1]; // one element short of the NHD extent
    assert_error(
        CacheView::builder(CacheFormat::BF16, 2, 4, 2, 8).key(&mut k).build(),
        Status::InvalidArgument,
        "key memory has 254 bytes, needs 256",
    );
    let mut k = vec![0u16; 2 * 4 * 2 * 8];
    let mut v = vec![0u16; 2 * 4 * 2 * 8];
    assert_error(
        CacheView::builder(CacheFormat::BF16, 2, 4, 2, 8).key(&mut k).value(&mut v).key_strides(128, 16, 8).build(),
        Status::InvalidArgument,
        "overlap",
    );
    let scales = [1.0f32];
    assert_error(
        CacheView::builder(CacheFormat::FP8E4M3, 1, 4, 2, 8)
            .scale_mode(pagedkv::ScaleMode::PerHead)
            .key(&mut k)
            .key_scale(&scales)
            .build(),
        Status::InvalidArgument,
        "key_scale has 4 bytes, needs 8",
    );
    assert_error(CacheView::builder(CacheFormat::BF16, 0, 4, 2, 8).key(&mut k).build(), Status::InvalidArgument, "> 0");
    assert_error(CacheView::builder(CacheFormat::BF16, 1, 4, 2, 8).build(), Status::InvalidArgument, "no key memory");
    // The library's own view check: per-token-head formats need their scale planes.
    let mut bytes = vec![0u8; 64];
    assert_error(
        CacheView::builder(CacheFormat::Int8PerTokenHead, 1, 4, 2, 8).key(&mut bytes).build(),
        Status::InvalidArgument,
        "k_scale_plane is NULL",
    );
    let data = [0f32; 4];
    assert_error(TensorRef::from_slice(&data, &[5]), Status::InvalidArgument, "spans 20 bytes, the memory has 16");
}

#[test]
fn pool_creation_errors() {
    assert_error(
        Pool::builder().block_size(0).num_blocks(4).layer(LayerSpec::new(CacheFormat::F32, 1, 8)).build(),
        Status::InvalidArgument,
        "block_size must be > 0",
    );
    assert_error(Pool::builder().block_size(4).num_blocks(4).build(), Status::InvalidArgument, "num_layers");
    assert_error(
        Pool::builder().block_size(4).num_blocks(4).layer(LayerSpec::new(CacheFormat::Int8PerTokenHead, 1, 8)).build(),
        Status::NotSupported,
        "pools hold plain and FP8 layers",
    );
    assert_error(
        Pool::builder()
            .block_size(4)
            .num_blocks(4)
            .layer(LayerSpec::new(CacheFormat::F32, 1, 8).k_only().head_size_v(4))
            .build(),
        Status::InvalidArgument,
        "head_size_v must be 0",
    );
    if !pagedkv::build_info().has_cuda() {
        assert_error(
            Pool::builder()
                .device(Device::cuda(0))
                .block_size(4)
                .num_blocks(4)
                .layer(LayerSpec::new(CacheFormat::F32, 1, 8))
                .build(),
            Status::NotSupported,
            "without CUDA",
        );
        assert_error(DeviceBuffer::zeroed(Device::cuda(0), 16), Status::NotSupported, "");
    }
}

#[test]
fn handle_state_errors() {
    let pool =
        Pool::builder().block_size(4).num_blocks(4).layer(LayerSpec::new(CacheFormat::F32, 1, 8)).build().unwrap();
    assert_error(pool.layer_view(0, Tier::Host), Status::InvalidState, "host tier");
    assert_error(pool.layer_view(3, Tier::Device), Status::InvalidArgument, "layer");
    assert_error(pool.release_blocks(Tier::Device, &[1]), Status::InvalidArgument, "");
    assert_eq!(pool.stats().unwrap().free_blocks, 4, "a failed release changes nothing");
    let mut table = pool.block_table(BlockTableParams::default()).unwrap();
    assert_error(table.append(42, 1, Stream::DEFAULT), Status::InvalidArgument, "42 is not in the table");
    table.add(1).unwrap();
    assert_error(table.add(1), Status::InvalidArgument, "");
    assert_error(table.fork(1, 1), Status::InvalidArgument, "");
    assert_error(table.upload(&[1, 2], &[0, 0], Stream::DEFAULT), Status::InvalidArgument, "");
    assert_error(
        pool.block_table(BlockTableParams { max_batch: -1, ..Default::default() }),
        Status::InvalidArgument,
        "max_batch must be >= 0",
    );
}

#[test]
fn errors_are_std_errors() {
    fn fails() -> Result<(), Box<dyn std::error::Error>> {
        let data = [0i32; 2];
        TensorRef::from_slice(&data, &[3])?;
        Ok(())
    }
    let err = fails().unwrap_err();
    let err = err.downcast_ref::<Error>().expect("a pagedkv::Error");
    assert_eq!(err.status(), Status::InvalidArgument);
}
