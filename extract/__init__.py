"""Extract stage: videos (decord, PyAV fallback) -> per-frame backbone features in an HDF5 store.

Public API (import the submodules; this package stays light because decode workers import it):

    extract.config.ExtractConfig        the stage's settings
    extract.stage.run_extract(...)      run the stage -> summary dict; writes videos.parquet
    extract.store.FeatureStore(path)    read features (get, get_many, sample_batch, rows_batch, load_packed, meta)
    extract.backbones.create(name, ...) frame backbones (efficientnet_lite0, resnet50, resnet101, tsm_r50)
    extract.bench.bench_extract / bench_store
"""
