"""Extract stage: videos (decord, PyAV fallback) -> per-frame backbone features in an HDF5 store.

Public API (import the submodules; this package stays light because decode workers import it):

    extract.config.ExtractConfig        the stage's settings
    extract.stage.run_extract(...)      run the stage -> summary dict; writes videos.parquet
    extract.store                       the feature store (below)
    extract.registry.BACKBONES          the backbone registry: name -> factory, feature dim, preprocessing
    extract.backbones.create(name, ...) a frame backbone: a registered name or timm/<timm model>
    extract.encoder.encoder_from_config(cfg)  the FrameEncoder of an ExtractConfig (runners, predict)
    extract.inprocess.run_inprocess(cfg, encoder, todo, sink, stop)  decode + embed videos into any sink
                                        with ok(id, features, meta) / fail(id, reason, meta) (predict)

Feature store: the shared ground of the stages. The extract stage writes it; training,
predict/export and the benchmarks read it, and all of them use only the API that extract/store.py
lists in its docstring and `__all__`: FeatureStore (ids, lengths, get, get_many, sample_batch,
rows_batch, load_packed, meta, index_table, shard_of, verify, attrs), ShardWriter, ShardIndex,
read_shard_index, list_shards, first_free_shard, shard_name, remove_partials, CorruptShardError.
The on-disk format is in docs/formats.md ("Feature store").

Modules, with imports pointing one way (stage -> runners -> jobs -> store; no runner imports the stage):

    stage.py        run_extract: check inputs, open or repair the store, plan, run, table + summary
    inprocess.py    runner: killable decode workers feeding the model in this process
    ray_runner.py   runner: Ray decode tasks feeding model actors (restarted or replaced on crashes)
    npy_import.py   runner: released per-video .npy features, checked and imported
    jobs.py         what runners share: make_job, video_meta, ResultSink (shards, failures.jsonl)
    store.py        the feature store (HDF5 shards, memory-mapped reads)
    decode.py       decoding + preprocessing in killable worker processes (no torch)
    sampling.py     frame indices (fixed count or fps)
    registry.py, backbones.py, encoder.py   backbones and the frame encoder (torch)
    config.py       ExtractConfig (the benchmarks are in pipeline/bench/extract_bench.py)
"""
